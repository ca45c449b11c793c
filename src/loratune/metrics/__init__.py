"""Scoring: a registry of metric backends on five axes, and the composite that combines them."""

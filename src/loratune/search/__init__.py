"""Hyperparameter search: Optuna studies with per-epoch scoring, pruning, resume, ensembles and Ray Tune."""

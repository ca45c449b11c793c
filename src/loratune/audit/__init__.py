"""Dataset audit: what to fix in a training set before training (captions, duplicates, quality, alignment, faces)."""

from loratune.audit.run import AuditOptions, AuditResult, run_audit

__all__ = ["AuditOptions", "AuditResult", "run_audit"]

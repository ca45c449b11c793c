"""Reports: terminal tables (``console``) and ``loratune report``, one self-contained HTML page per run (plots, trial
table, sample grids, audit, models).

>>> from loratune.report import build_report
>>> path = build_report("runs/luca")  # doctest: +SKIP  -> runs/luca/report.html, opens with no network
"""

from __future__ import annotations

from loratune.report.build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]

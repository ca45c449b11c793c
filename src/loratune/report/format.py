"""How the report writes a single value: few digits, scientific notation for the very small and very large."""

from __future__ import annotations

import math
from html import escape
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """A number or value as the report prints it (escaped HTML)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.{digits}g}"
    return escape(str(value))

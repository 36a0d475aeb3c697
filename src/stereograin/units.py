"""Physical lengths given on the command line (``128nm``, ``0.05um``, ``5um``)."""

from __future__ import annotations

import math
import re

from .errors import StereograinError

__all__ = ["parse_length"]

_FACTORS_NM = {"nm": 1.0, "um": 1e3, "µm": 1e3, "mm": 1e6}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]*)\s*$")


def parse_length(text: str | float, default_unit: str = "nm") -> float:
    """Parse a length such as ``"128nm"``, ``"0.128um"`` or ``"128"`` into nanometres.

    Parameters
    ----------
    text : str or float
        Number with an optional unit (nm, um/µm, mm).
    default_unit : str
        Unit of a bare number.

    Returns
    -------
    float
        Length in nm (positive, finite).
    """
    m = _PATTERN.match(str(text))
    if not m:
        raise StereograinError(f"cannot read length {text!r}; write a positive number with a unit, e.g. 128nm or 0.05um")
    value, unit = float(m.group(1)), (m.group(2) or default_unit)
    if unit not in _FACTORS_NM:
        raise StereograinError(f"unknown length unit {unit!r} in {text!r}; use nm, um or mm")
    nm = value * _FACTORS_NM[unit]
    if not (nm > 0 and math.isfinite(nm)):
        raise StereograinError(f"length {text!r} must be positive")
    return nm

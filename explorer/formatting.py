"""Numbers as the panels show them: 3 significant digits, rates as percentages, and optional
numeric fields where empty means None (a rate's Wilson interval is ``saeuron_core.intervals.wilson``)."""

from __future__ import annotations

import math

from saeuron_core.errors import SaeuronError


def sig3(value) -> str:
    """``value`` with 3 significant digits ("" for None, integers stay whole)."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if value != value:
        return "nan"
    if value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def percent(rate: float | None) -> str:
    """A rate in [0, 1] as a percentage with 3 significant digits at most ("100%", "37.5%")."""
    if rate is None:
        return ""
    return f"{float(f'{100 * rate:.3g}'):g}%"


def optional_number(name: str, value) -> float | None:
    """A numeric field where empty means "not given": None, "" or blanks give None; text must
    parse as a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise SaeuronError(f"{name} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise SaeuronError(f"{name} must be a number (or empty), got {value.strip()!r}") from None
    if not isinstance(value, (int, float)) or value != value or math.isinf(value):
        raise SaeuronError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def optional_int(name: str, value) -> int | None:
    """Like ``optional_number`` for whole numbers: "3" and 3.0 give 3, "2.5" is refused."""
    number = optional_number(name, value)
    if number is None:
        return None
    if not number.is_integer():
        raise SaeuronError(f"{name} must be a whole number, got {value!r}")
    return int(number)

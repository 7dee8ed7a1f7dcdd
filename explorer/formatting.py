"""Numbers as the panels show them: 3 significant digits, rates as percentages with their Wilson
95% interval, and optional numeric fields where empty means None."""

from __future__ import annotations

import math

from saeuron_core.errors import SaeuronError

Z95 = 1.959963984540054
"""Two-sided 95% quantile of the standard normal."""


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


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate ``successes / n`` ((0, 1) when n is 0)."""
    if n < 0 or not 0 <= successes <= n:
        raise SaeuronError(f"a rate needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # exact at the ends (floating point leaves ~1e-17 at successes = 0, above the rate 0)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def percent(rate: float | None) -> str:
    """A rate in [0, 1] as a percentage with 3 significant digits at most ("100%", "37.5%")."""
    if rate is None:
        return ""
    return f"{float(f'{100 * rate:.3g}'):g}%"


def rate_with_interval(successes: int, n: int) -> str:
    """"62.5% [30.6%, 86.3%] (5/8)": the rate, its Wilson 95% interval and the counts."""
    if n == 0:
        return "n/a (0 images)"
    low, high = wilson_interval(successes, n)
    return f"{percent(successes / n)} [{percent(low)}, {percent(high)}] ({successes}/{n})"


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

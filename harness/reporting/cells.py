"""How the report prints a number in a table cell; `–` stands for a value that is not there."""

from __future__ import annotations


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def pct_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None or ci is None:
        return "–"
    return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.1f}"

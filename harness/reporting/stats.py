"""The few statistics the report and `harness compare` print: Wilson intervals, cumulative curves, two tests.

Written by hand because each is a closed formula of a few lines and scipy is not a dependency of the harness:
the Wilson score interval (Newcombe 1998, method 3), the pooled two-proportion z-test, and McNemar's exact test
(the two-sided binomial test of the discordant pairs, McNemar 1947; exact because runs of tens of questions have
few discordant pairs).
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054
"""The 97.5% quantile of the standard normal: two-sided 95% intervals."""


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def curve(progress: list[dict], key: str) -> list[tuple[int, bool]]:
    """(questions seen, correct) for the lines that carry `key`, in log order."""
    return [(i + 1, bool(line[key])) for i, line in enumerate(progress) if key in line]


def cumulative(points: list[tuple[int, bool]], upto: int | None = None) -> dict:
    """{k, n, value, ci} of the points with questions-seen <= upto (all when None)."""
    pts = [c for q, c in points if upto is None or q <= upto]
    k, n = sum(pts), len(pts)
    return {"k": k, "n": n, "value": k / n if n else None, "ci": list(wilson(k, n)) if n else None}


def two_proportion_z(k1: float, n1: float, k2: float, n2: float) -> tuple[float, float]:
    """Pooled two-proportion z-test of p2 - p1: (z, two-sided p-value); (0, 1) when undefined."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (k2 / n2 - k1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (right only in the first / only in the second).

    Under the null each discordant question is a fair coin: p = 2 * P(Binomial(b + c, 1/2) <= min(b, c)), capped
    at 1; 1 when there is no discordant question.
    """
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_difference(first: list[bool], second: list[bool], z: float = Z95) -> dict:
    """second - first on the same questions: the mean difference with its 95% interval (normal approximation of
    the mean of per-question differences in {-1, 0, 1}) and McNemar's exact p-value."""
    n = len(first)
    if n == 0 or n != len(second):
        raise ValueError(f"a paired difference needs two equally long answer lists, got {n} and {len(second)}")
    only_first = sum(a and not b for a, b in zip(first, second))
    only_second = sum(b and not a for a, b in zip(first, second))
    mean = (only_second - only_first) / n
    half = z * math.sqrt(max(0.0, (only_first + only_second) / n - mean * mean) / n)
    return {"n": n, "delta": mean, "ci": [mean - half, mean + half], "only_first": only_first,
            "only_second": only_second, "p_mcnemar": mcnemar_exact(only_first, only_second)}


def verdict(diff: dict, first: str, second: str) -> str:
    """One line saying whether `second` beat `first` on the paired questions."""
    lo, hi = diff["ci"]
    figure = f"{100 * diff['delta']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] over {diff['n']} questions"
    if diff["p_mcnemar"] < 0.05:
        side = "better" if diff["delta"] > 0 else "worse"
        return f"{second} is {side} than {first}: {figure} (McNemar p = {diff['p_mcnemar']:.2g})."
    return (f"no significant difference between {second} and {first}: {figure} (McNemar p = "
            f"{diff['p_mcnemar']:.2g}).")

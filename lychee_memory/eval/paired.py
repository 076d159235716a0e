"""Exact confidence intervals for shares and for paired wins/losses of two methods on the same questions.

A share of n questions gets a Clopper-Pearson interval. Two methods asked the same questions are compared by
their discordant pairs (McNemar): with d = wins + losses, the win share w/d gets a Clopper-Pearson interval
(the exact sign test), and the difference of the two methods' shares, (wins - losses) / n = d/n (2 w/d - 1),
gets that interval mapped through the same formula with d held fixed (the conditional exact interval). No
resampling, so the numbers are the same on every run and checkable by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError


def _binomial_tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X >= k) when ``upper`` else P(X <= k), for X ~ Binomial(n, p)."""
    terms = range(k, n + 1) if upper else range(0, k + 1)
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in terms)


def _solve(k: int, n: int, target: float, upper: bool) -> float:
    """The p at which the tail (increasing in p when ``upper``, decreasing otherwise) equals ``target``."""
    low, high = 0.0, 1.0
    for _ in range(100):
        middle = (low + high) / 2
        tail = _binomial_tail(k, n, middle, upper)
        if (tail < target) == upper:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a share k/n; (0, 1) when n is 0."""
    if not 0 < confidence < 1:
        raise ConfigurationError(f"confidence must be between 0 and 1, got {confidence}")
    if not 0 <= k <= n:
        raise ConfigurationError(f"a share needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    lower = 0.0 if k == 0 else _solve(k, n, alpha / 2, upper=True)
    upper = 1.0 if k == n else _solve(k, n, alpha / 2, upper=False)
    return lower, upper


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign-test (McNemar exact) p-value of ``wins`` against ``losses``; 1 with no discordant pair."""
    discordant = wins + losses
    if discordant == 0:
        return 1.0
    return min(1.0, 2 * _binomial_tail(min(wins, losses), discordant, 0.5, upper=False))


@dataclass(frozen=True)
class PairedComparison:
    """Method A against method B on the same n questions (a hit is a per-question success, e.g. both gold)."""

    n: int
    wins: int  # A hit, B missed
    losses: int  # A missed, B hit
    ties: int
    difference: float  # share of A's hits minus share of B's hits
    difference_interval: tuple[float, float]
    win_share_interval: tuple[float, float]  # of the discordant pairs, the share A won (exact sign test)
    p_value: float

    def describe(self) -> str:
        """``+3/-1 (=6), diff +0.20 [-0.08, +0.30], p 0.62``."""
        low, high = self.difference_interval
        return (
            f"+{self.wins}/-{self.losses} (={self.ties}), diff {self.difference:+.2f} "
            f"[{low:+.2f}, {high:+.2f}], p {self.p_value:.2g}"
        )


def paired_comparison(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> PairedComparison:
    """Wins, losses and ties of ``a`` against ``b`` (paired by position) with exact McNemar intervals."""
    if len(a) != len(b):
        raise ConfigurationError(f"paired outcomes need the same questions: {len(a)} against {len(b)}")
    n = len(a)
    wins = sum(bool(x) and not bool(y) for x, y in zip(a, b))
    losses = sum(bool(y) and not bool(x) for x, y in zip(a, b))
    discordant = wins + losses
    share = clopper_pearson(wins, discordant, confidence)
    scale = discordant / n if n else 0.0
    return PairedComparison(
        n=n,
        wins=wins,
        losses=losses,
        ties=n - discordant,
        difference=(wins - losses) / n if n else 0.0,
        difference_interval=(scale * (2 * share[0] - 1) + 0.0, scale * (2 * share[1] - 1) + 0.0),
        win_share_interval=share,
        p_value=sign_test_p(wins, losses),
    )

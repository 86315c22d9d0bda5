"""The composite 0-100 score of the signals' sub-scores, its label and its breakdown.

Signals enter in the order of their registry (`signals.registry.SIGNALS` unless
named otherwise); the sub-score mappings are the signals' own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from signals.arrays import FloatArray
from signals.registry import SIGNALS

__all__ = [
    "MIN_SIGNALS",
    "SIGNALS",
    "Breakdown",
    "Composite",
    "SignalPart",
    "breakdown",
    "composite",
    "label",
]

MIN_SIGNALS = 5


class Composite:
    """The composite score with its weights and threshold fixed: built once, called per bar time."""

    def __init__(
        self, weights: Mapping[str, float] | None = None, min_signals: int = MIN_SIGNALS
    ) -> None:
        self._weights = {n: float(w) for n, w in (weights or {}).items()}
        self.min_signals = min_signals

    def __call__(self, subs: Mapping[str, FloatArray]) -> FloatArray:
        """Weighted mean of the available sub-scores, renormalised; NaN below `min_signals`.

        The sub-scores add up in the order of `subs` (the registry's).
        """
        names = list(subs)
        if not names:
            raise ValueError("composite needs at least one sub-score column")
        stack = np.array([subs[n] for n in names], dtype=np.float64)  # (k, rows)
        if all(self._weights.get(n, 1.0) == 1.0 for n in names):
            return self._unit_weights(stack)
        w = np.array([self._weights.get(n, 1.0) for n in names])
        avail = ~np.isnan(stack) & (w[:, None] > 0)
        wsum = (avail * w[:, None]).sum(axis=0)
        total = np.where(avail, stack * w[:, None], 0.0).sum(axis=0)
        enough = avail.sum(axis=0) >= self.min_signals
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(enough & (wsum > 0), total / wsum, np.nan)

    def _unit_weights(self, stack: FloatArray) -> FloatArray:
        """All weights 1 (the default): the same sums, without multiplying by 1.0.

        The weight sum is then the count of available signals, and the totals
        add the same values in the same order, so the result is bit for bit
        the general formula's.
        """
        missing = np.isnan(stack)
        total = np.where(missing, 0.0, stack).sum(axis=0)
        count = len(stack) - missing.sum(axis=0)
        out = np.full(total.shape, np.nan)
        np.divide(total, count, out=out, where=count >= max(self.min_signals, 1))
        return out


def composite(
    subs: Mapping[str, FloatArray],
    weights: Mapping[str, float] | None = None,
    min_signals: int = MIN_SIGNALS,
) -> FloatArray:
    """Weighted mean of the available sub-scores, renormalised; NaN ("warming up") below `min_signals`."""
    return Composite(weights, min_signals)(subs)


def label(score: float) -> str:
    """The word for a score: strong bullish, bullish, neutral, bearish, strong bearish, or warming up."""
    if np.isnan(score):
        return "warming up"
    if score >= 70:
        return "strong bullish"
    if score >= 60:
        return "bullish"
    if score <= 30:
        return "strong bearish"
    if score <= 40:
        return "bearish"
    return "neutral"


@dataclass(frozen=True)
class SignalPart:
    """One signal's contribution: its raw value, sub-score and effective (renormalised) weight."""

    name: str
    raw: float
    sub: float
    weight: float

    @property
    def available(self) -> bool:
        """Whether the signal counted towards the score."""
        return not np.isnan(self.sub) and self.weight > 0


@dataclass(frozen=True)
class Breakdown:
    """A score with the parts that made it, so an alert can explain itself."""

    score: float
    label: str
    parts: tuple[SignalPart, ...]

    def as_dict(self) -> dict[str, dict[str, float | None]]:
        """JSON-ready: NaN becomes None."""
        return {
            p.name: {"raw": _opt(p.raw), "sub": _opt(p.sub), "weight": p.weight} for p in self.parts
        }


def _opt(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def breakdown(
    raw: Mapping[str, float],
    subs: Mapping[str, float],
    weights: Mapping[str, float] | None = None,
    min_signals: int = MIN_SIGNALS,
    names: Sequence[str] = tuple(SIGNALS),
) -> Breakdown:
    """The breakdown of one symbol-bar from its raw values and sub-scores (keyed by signal name).

    `names` are the signals to show, in score order (a missing one is unavailable).
    """
    sub = {n: float(subs.get(n, np.nan)) for n in names}
    score = float(composite({n: np.array([v]) for n, v in sub.items()}, weights, min_signals)[0])
    w = {n: (1.0 if weights is None else weights.get(n, 1.0)) for n in names}
    avail = {n: not np.isnan(sub[n]) and w[n] > 0 for n in names}
    wsum = sum(w[n] for n in names if avail[n])
    parts = tuple(
        SignalPart(n, float(raw.get(n, np.nan)), sub[n], w[n] / wsum if avail[n] and wsum else 0.0)
        for n in names
    )
    return Breakdown(score, label(score), parts)

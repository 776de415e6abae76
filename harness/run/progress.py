"""One line of online/progress.jsonl: the core every strategy writes, with the strategy's own fields beside it.

The stage builds a `ProgressLine`; the report, the metric sinks and `harness compare` read lines by the names
here, so a field renamed in one place cannot silently vanish from another.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

CURVES = {"trained": "correct_before", "frozen": "frozen_correct", "zero_shot": "zero_shot_correct"}
"""Progressive-validation curve -> its progress-line key (True when that policy answered the question right)."""
PHASES = ("generate_seconds", "curves_seconds", "rollout_seconds", "update_seconds")
"""The online stage's phases: solve (the trained policy's answers), the frozen and zero-shot curves, play (the
strategy's exploration for pairs) and learning; a schedule that answers and explores in the same forward passes
(the Flow's continuous one) logs the two together as generate. Any other `*_seconds` field is a strategy's own
split of generate + rollout time (e.g. the Flow's answer generation and Stop decisions)."""


@dataclass
class ProgressLine:
    index: int
    """Position in the training stream."""
    id: str
    """The record's id."""
    correct_before: bool
    """The trained policy answered right before learning from this question (progressive validation)."""
    extracted: str | None
    """The final answer read from that answer."""
    pairs: dict[str, int]
    """Preference pairs this question gave each agent."""
    pair_nodes: list[str]
    """Where each pair came from (e.g. `answer:2`, `stop:1`, `step:3`)."""
    updates: dict[str, list[dict]]
    """Optimizer steps taken after this question, per agent (loss, margin, reward accuracy, pairs)."""
    tokens: int
    """Tokens generated for the answer and the pairs (curves not included)."""
    seconds: dict[str, float]
    """Time of each phase (`PHASES`) and of the strategy's own sub-phases, this question's share."""
    curves: dict[str, bool] = field(default_factory=dict)
    """`frozen_correct`, `zero_shot_correct`: the other curves' answers, where measured."""
    strategy: dict = field(default_factory=dict)
    """The strategy's own fields (e.g. the Flow's chunks, end and nodes)."""

    def to_json(self) -> dict:
        """The flat JSON object written to progress.jsonl."""
        return {"index": self.index, "id": self.id, "correct_before": self.correct_before, **self.curves,
                "extracted": self.extracted, **self.strategy, "pairs": self.pairs, "pair_nodes": self.pair_nodes,
                "updates": self.updates, "tokens": self.tokens, **self.seconds}


CORE_KEYS = frozenset(f.name for f in fields(ProgressLine) if f.name not in ("seconds", "curves", "strategy")
                      ) | frozenset(CURVES.values())
"""The keys of a progress line that every strategy writes (its `*_seconds` fields aside); every other key is a
strategy's own."""

"""A preference pair as token ids: what every strategy makes and the learner trains on (never re-tokenized text)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Pair:
    agent: str
    """Which adapter learns from it (e.g. `answer` or `stop` for Flow-DPO, `policy` for one-agent methods)."""
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    node: str = ""
    """Where it came from, e.g. `answer:2` (chunk 2) or `stop:1`."""
    label_smoothing: float | None = None
    """This pair's conservative-DPO smoothing (MCTS-DPO's visit-count confidence); None: the recipe's."""

    def to_dict(self) -> dict:
        return asdict(self)

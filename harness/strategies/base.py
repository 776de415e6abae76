"""The seam between the online loop and a paper's method: what every strategy provides.

A strategy turns training questions into preference pairs for the adapters (agents) it trains. The online stage
(harness/stages/online.py) knows nothing of chunks, trees or schedules; it calls, for each group of questions:

- `solve(records, seeds)`: answer with the current weights (progressive validation: the question has not been
  learned from yet); `trained=False` answers with the adapters disabled (the frozen curve). Compile calls it too,
  for the policy's SFT traces;
- `play(solutions)`: explore from those answers and return each question's pairs, the tokens it generated and
  its own log fields;
- `explore(records, seeds)`: both for the trained policy, which is what the online loop calls. A strategy whose
  exploration can start before its answers are finished (the Flow's rollout at a node starts once the main chain
  has passed it) schedules the two together; the others solve, then play (`solve_then_play`).

Everything a strategy writes is token ids (never re-tokenized text). Its randomness comes only from each
question's seed: every prompt it sends derives its own seed from that one and from where it is (node, sample,
try), so what a question gets does not depend on which questions share its batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.data.records import Record
from harness.training.pairs import Pair


@dataclass
class Solution:
    """One answer to a question, graded."""

    record: Record
    prompt_ids: list[int]
    answer_ids: list[int]
    text: str
    extracted: str | None
    correct: bool
    tokens: int
    """Tokens generated for it, discarded ones included."""
    seed: int = 0
    """The question's seed it was drawn with; `play` derives its own draws from it."""
    log: dict = field(default_factory=dict)
    """The strategy's own fields for the progress line (e.g. chunks and how the answer ended)."""
    state: Any = None
    """What the strategy keeps to play from this answer (e.g. the Flow's trace)."""


@dataclass
class Play:
    """What one question gave: pairs for the agents, the tokens spent finding them, log fields."""

    pairs: list[Pair]
    tokens: int
    log: dict = field(default_factory=dict)


@dataclass
class Explored:
    """A group's answers and what was played from them, with the seconds of each online phase it spent."""

    solutions: list[Solution]
    plays: list[Play]
    seconds: dict[str, float]
    """`generate_seconds` (the answers) and `rollout_seconds` (the play); a schedule that runs both in the same
    forward passes logs their whole under `generate_seconds`."""


def solve_then_play(strategy: Strategy, records: list[Record], seeds: list[int]) -> Explored:
    """`explore` as two phases: the trained policy answers the group, then the strategy plays from the answers."""
    t0 = time.perf_counter()
    solutions = strategy.solve(records, seeds)
    t1 = time.perf_counter()
    plays = strategy.play(solutions)
    return Explored(solutions, plays, {"generate_seconds": t1 - t0, "rollout_seconds": time.perf_counter() - t1})


class Strategy(Protocol):
    agents: list[str]
    """Adapters trained, as in the config's `agents()`."""

    def solve(self, records: list[Record], seeds: list[int], trained: bool = True,
              temperature: float | None = None) -> list[Solution]:
        """Answer every record (record i with seed i) with the current adapters (`trained=False`: adapters
        disabled), in one batch; `temperature` overrides the config's."""
        ...

    def play(self, solutions: list[Solution]) -> list[Play]:
        """Preference pairs of each solved question, in one batch over the group."""
        ...

    def explore(self, records: list[Record], seeds: list[int]) -> Explored:
        """`solve` with the trained adapters and `play` from those answers, in whatever schedule the strategy
        likes: the results are the same as solve-then-play."""
        ...

    def timings(self) -> dict[str, float]:
        """Seconds of the strategy's own phases since the last call (keys end in `_seconds`), then reset."""
        ...

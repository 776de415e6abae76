"""Instance-level DPO: whole answers sampled from the live policy, a correct one preferred to a wrong one.

The baseline both MCTS-DPO (arXiv 2405.00451, Table 1 "instance-level online DPO") and SCDPO (arXiv 2407.00782,
"DPO" column) report, run on the same stream, grader and learner as the step-level methods. TRL's
`OnlineDPOTrainer` scores two samples with a judge or reward model and re-tokenizes text; here the verifier is
the grader and the pairs are the sampled token ids, so it is written on the shared strategy seam instead.
"""

from __future__ import annotations

import time

from harness.data import Record
from harness.strategies.answers import one_pass
from harness.strategies.base import Play, Solution
from harness.strategies.naive_dpo_config import NaiveDPOConfig
from harness.training.learner import Pair

AGENT = "policy"


class NaiveDPO:
    def __init__(self, cfg: NaiveDPOConfig, engine) -> None:
        self.cfg = cfg
        self.agents = cfg.agents()
        self.backend, self.prompter = engine.backend, engine.prompter
        self.seconds = 0.0

    def solve(self, records: list[Record], seed: int, trained: bool = True,
              temperature: float | None = None) -> list[Solution]:
        return one_pass(self.backend, self.prompter, records, AGENT if trained else None, self.cfg.max_new_tokens,
                        self.cfg.temperature if temperature is None else temperature, self.cfg.top_p, seed)

    def play(self, solutions: list[Solution], seed: int) -> list[Play]:
        """`samples` fresh answers per question, all in one call; pairs of a correct and a wrong one."""
        start = time.perf_counter()
        records = [s.record for s in solutions for _ in range(self.cfg.samples)]
        drawn = self.solve(records, seed)
        self.seconds += time.perf_counter() - start
        plays = []
        for k, solution in enumerate(solutions):
            own = drawn[k * self.cfg.samples : (k + 1) * self.cfg.samples]
            plays.append(Play(pairs=pairs_of(solution, own, self.cfg.pairs_per_question),
                              tokens=sum(s.tokens for s in own),
                              log={"samples_correct": sum(s.correct for s in own)}))
        return plays

    def timings(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, 0.0
        return {"sample_seconds": seconds}


def pairs_of(solution: Solution, samples: list[Solution], most: int) -> list[Pair]:
    """Up to `most` pairs, the i-th correct sample against the i-th wrong one (each sample used once); samples
    with the same ids on both sides cannot differ in correctness, so every pair has two different completions."""
    right = [s for s in samples if s.correct]
    wrong = [s for s in samples if not s.correct]
    return [Pair(agent=AGENT, prompt_ids=solution.prompt_ids, chosen_ids=good.answer_ids, rejected_ids=bad.answer_ids,
                 node="answer") for good, bad in list(zip(right, wrong))[:most]]

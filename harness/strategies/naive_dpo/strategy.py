"""Instance-level DPO: whole answers sampled from the live policy, a correct one preferred to a wrong one.

The baseline both MCTS-DPO (arXiv 2405.00451, Table 1 "instance-level online DPO") and SCDPO (arXiv 2407.00782,
"DPO" column) report, run on the same stream, grader and learner as the step-level methods. TRL's
`OnlineDPOTrainer` scores two samples with a judge or reward model and re-tokenizes text; here the verifier is
the grader and the pairs are the sampled token ids, so it is written on the shared strategy seam instead.
"""

from __future__ import annotations

import time

from harness.run.seeds import seed_for
from harness.strategies.base import Play, Solution
from harness.strategies.naive_dpo.config import NaiveDPOConfig
from harness.strategies.one_pass import OnePassPolicy, whole_answer_pairs


class NaiveDPO(OnePassPolicy):
    def __init__(self, cfg: NaiveDPOConfig, engine) -> None:
        super().__init__(cfg, engine)
        self.seconds = 0.0

    def play(self, solutions: list[Solution]) -> list[Play]:
        """`samples` fresh answers per question, all in one call; pairs of a correct and a wrong one."""
        start = time.perf_counter()
        records = [s.record for s in solutions for _ in range(self.cfg.samples)]
        seeds = [seed_for(s.seed, "sample", k) for s in solutions for k in range(self.cfg.samples)]
        drawn = self.solve(records, seeds)
        self.seconds += time.perf_counter() - start
        plays = []
        for k in range(len(solutions)):
            own = drawn[k * self.cfg.samples : (k + 1) * self.cfg.samples]
            right, wrong = [s for s in own if s.correct], [s for s in own if not s.correct]
            plays.append(Play(pairs=whole_answer_pairs(right, wrong, self.cfg.pairs_per_question, "answer"),
                              tokens=sum(s.tokens for s in own),
                              log={"samples_correct": sum(s.correct for s in own)}))
        return plays

    def timings(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, 0.0
        return {"sample_seconds": seconds}


STRATEGY = NaiveDPO
"""What `build_strategy` builds for `online.strategy.name: naive_dpo`."""

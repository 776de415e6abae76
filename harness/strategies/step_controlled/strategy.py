"""Step-Controlled DPO (Lu et al., arXiv 2407.00782; code github.com/mathllm/Step-Controlled_DPO) on the seam.

Per question of a group:

- naive pairs (the paper): `samples` answers of the live policy at `temperature`; chosen = a correct one whose text
  holds no filter word ("error", "apolog" in the authors' code), rejected = a wrong one;
- step-controlled pairs (the paper): the first such correct answer is split into steps on its token ids (a step
  ends after every token whose text holds a delimiter, harness/generation/steps.py), cut after step k and
  continued from there step by step, the n-th new step at `step_temperature(schedule, n)`, to the end of an
  answer. A continuation that ends correct is started again from the same cut (at most `max_tries`); the first
  that ends wrong gives the pair: prompt = answer prompt + the ids of steps 0..k, chosen = the correct answer's
  remaining ids, rejected = the continuation's ids. The learner scores completion tokens only
  (harness/training/learner.py), so the loss covers the steps after k and never the shared prefix.

Every live continuation of the whole group advances one step per round, all in one backend call with one
temperature and one seed per prompt (continuations sit at different step numbers). Randomness comes only from the
question's seed (`Solution.seed`) and where a draw happens: sample k from `seed_for(seed, "sample", k)`, the random
cuts from `seed_for(seed, "cut")`, step s of try a from cut k from `seed_for(seed, "continue", k, a, s)`. So a
question's pairs are a function of the weights, its record and its seed, whichever questions share its group.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace

from harness.data.records import Record
from harness.errors import RecipeError
from harness.generation.steps import step_stop_ids
from harness.grading.grader import grade
from harness.run.seeds import seed_for
from harness.strategies.base import Play, Solution
from harness.strategies.one_pass import AGENT, OnePassPolicy, whole_answer_pairs
from harness.strategies.step_controlled.config import StepControlledConfig
from harness.training.pairs import Pair

SCHEDULES = {"paper": (1.1, 0.05), "code": (1.1, 0.1)}
"""Schedule -> (temperature of the first new step, rise per further step). The paper: 1.1 + 0.05 per step; the
authors' code (src/step_controled_dpo_lce/*_ascend_loss.py, GSM8K and MATH alike): 1.1 + 0.1 per step."""
TEMPERATURE_CAP = 1.4
"""Highest continuation temperature, in the paper and the code alike."""


def step_temperature(schedule: str, step: int) -> float:
    """Sampling temperature of the `step`-th new step (0-based) of a continuation."""
    start, rise = SCHEDULES[schedule]
    return round(min(start + rise * step, TEMPERATURE_CAP), 6)  # rounded: 1.1 + 3 * 0.05 is 1.2500000000000002


def split_steps(ids: list[int], ends: set[int], eos: set[int]) -> list[list[int]]:
    """An answer's ids cut into steps, each ending after an id in `ends` (the last may not); a trailing run of EOS
    ids joins the step before it, so that no cut leaves only the EOS to continue."""
    steps: list[list[int]] = []
    current: list[int] = []
    for token in ids:
        current.append(token)
        if token in ends:
            steps.append(current)
            current = []
    if current and steps and all(t in eos for t in current):
        steps[-1] += current
    elif current:
        steps.append(current)
    return steps


@dataclass
class Continuation:
    """One try at a wrong ending from a cut after step `cut` of a question's correct answer."""

    question: int
    """Index of the question in the group."""
    seed: int
    """The question's seed: every step's seed derives from it and from (cut, attempt, step)."""
    record: Record
    cut: int
    prompt_ids: list[int]
    """Answer prompt + the ids of steps 0..cut."""
    kept: list[int]
    """The ids of steps 0..cut (the answer so far)."""
    rest: list[int]
    """The correct answer's ids after the cut (the chosen completion)."""
    attempt: int = 0
    ids: list[int] = field(default_factory=list)
    """Ids written after the cut."""
    steps: int = 0
    """Steps written after the cut."""


class StepControlled(OnePassPolicy):
    def __init__(self, cfg: StepControlledConfig, engine) -> None:
        super().__init__(cfg, engine)
        self.stops = step_stop_ids(engine.tokenizer, cfg.step_delimiters)
        if any(len(stop) != 1 for stop in self.stops):
            raise RecipeError("step_stop_ids must give one-id stop sequences: steps are split on single ids")
        self.step_ends = {stop[0] for stop in self.stops}
        self.seconds = {"sample_seconds": 0.0, "continue_seconds": 0.0}

    def play(self, solutions: list[Solution]) -> list[Play]:
        """Naive and step-controlled pairs of every question: one call for all samples, then one per round."""
        start = time.perf_counter()
        n = self.cfg.samples
        seeds = [seed_for(s.seed, "sample", k) for s in solutions for k in range(n)]
        drawn = self.solve([s.record for s in solutions for _ in range(n)], seeds)
        groups = [drawn[q * n : (q + 1) * n] for q in range(len(solutions))]
        tokens = [sum(s.tokens for s in own) for own in groups]
        middle = time.perf_counter()
        starts = [c for q, (s, own) in enumerate(zip(solutions, groups)) for c in self._cuts(q, s.seed, own)]
        wrong = self._run(starts, tokens)
        self.seconds["sample_seconds"] += middle - start
        self.seconds["continue_seconds"] += time.perf_counter() - middle
        plays = []
        for q, own in enumerate(groups):
            naive = self._naive_pairs(own)
            steps = self._step_pairs([c for c in wrong if c.question == q])
            plays.append(Play(pairs=naive + steps, tokens=tokens[q],
                              log={"samples_correct": sum(s.correct for s in own), "naive_pairs": len(naive),
                                   "step_pairs": len(steps), "cuts": sum(c.question == q for c in starts)}))
        return plays

    def timings(self) -> dict[str, float]:
        out = dict(self.seconds)
        self.seconds = dict.fromkeys(out, 0.0)
        return out

    def _usable(self, answer: Solution) -> bool:
        """A correct answer that may be chosen (or cut): none of the filter words in its text."""
        text = answer.text.lower()
        return answer.correct and not any(word.lower() in text for word in self.cfg.filter_words)

    def _naive_pairs(self, own: list[Solution]) -> list[Pair]:
        """Up to `naive_pairs` pairs, the i-th usable correct answer against the i-th wrong one."""
        right = [s for s in own if self._usable(s)]
        wrong = [s for s in own if not s.correct]
        return whole_answer_pairs(right, wrong, self.cfg.naive_pairs, "naive")

    def _cuts(self, question: int, seed: int, own: list[Solution]) -> list[Continuation]:
        """The first tries of a question: its first usable correct answer cut after each chosen step."""
        right = [s for s in own if self._usable(s)]
        if not right or not self.cfg.negatives_per_question:
            return []
        answer = right[0]
        steps = split_steps(answer.answer_ids, self.step_ends, set(self.backend.eos_token_ids))
        cuts = list(range(len(steps) - 1))  # a cut keeps at least one step and leaves at least one
        if self.cfg.cut == "random":
            draw = random.Random(seed_for(seed, "cut"))
            cuts = sorted(draw.sample(cuts, min(self.cfg.negatives_per_question, len(cuts))))
        out = []
        for k in cuts:
            kept = [t for step in steps[: k + 1] for t in step]
            out.append(Continuation(question=question, seed=seed, record=answer.record, cut=k,
                                    prompt_ids=answer.prompt_ids + kept, kept=kept,
                                    rest=answer.answer_ids[len(kept) :]))
        return out

    def _run(self, live: list[Continuation], tokens: list[int]) -> list[Continuation]:
        """Continue every try step by step to the end of its answer, one backend call per round for all of them;
        a try that ends correct is replaced by the next try from its cut. Returns the tries that ended wrong
        (at most one per cut); adds the tokens written to each question's count."""
        wrong: list[Continuation] = []
        while live:
            budgets = [self.cfg.max_new_tokens - len(c.kept) - len(c.ids) for c in live]
            temperatures = [step_temperature(self.cfg.schedule, c.steps) for c in live]
            seeds = [seed_for(c.seed, "continue", c.cut, c.attempt, c.steps) for c in live]
            samples = self.backend.generate([c.prompt_ids + c.ids for c in live], AGENT, budgets, temperatures,
                                            self.cfg.top_p, n=1, seed=seeds, stop=self.stops)
            going: list[Continuation] = []
            for c, budget, (sample,) in zip(live, budgets, samples):
                c.ids += sample.token_ids
                c.steps += 1
                tokens[c.question] += len(sample.token_ids)
                if sample.stopped and len(sample.token_ids) < budget:
                    going.append(c)
                elif not self._correct(c.record, c.kept + c.ids):
                    wrong.append(c)
                elif c.attempt + 1 < self.cfg.max_tries:
                    going.append(replace(c, attempt=c.attempt + 1, ids=[], steps=0))
            live = going
        return wrong

    def _correct(self, record: Record, answer_ids: list[int]) -> bool:
        text = self.tokenizer.decode(answer_ids, skip_special_tokens=True)
        return grade(text, record.answer, record.task).correct

    def _step_pairs(self, wrong: list[Continuation]) -> list[Pair]:
        """One pair per cut that went wrong, the earliest cuts first, at most `negatives_per_question`."""
        wrong = sorted(wrong, key=lambda c: c.cut)[: self.cfg.negatives_per_question]
        return [Pair(agent=AGENT, prompt_ids=c.prompt_ids, chosen_ids=c.rest, rejected_ids=c.ids, node=f"step:{c.cut}")
                for c in wrong]


STRATEGY = StepControlled
"""What `build_strategy` builds for `online.strategy.name: step_controlled`."""

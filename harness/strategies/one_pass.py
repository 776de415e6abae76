"""One-pass answers: the policy (or the base model) writes a whole answer in one generation, graded.

Every one-agent strategy's progressive validation, the zero-shot curve, the baseline stage and the compile stage's
policy traces are this; only Flow-DPO answers through its Flow. `OnePassPolicy` is what the one-agent strategies
(MCTS-DPO, SCDPO, naive DPO) share: the `policy` adapter and its `solve`.
"""

from __future__ import annotations

from harness.config.strategy import PolicyConfig, StrategyConfig
from harness.data.records import Record
from harness.generation.backend import Backend
from harness.generation.prompts import Prompter
from harness.grading.grader import grade
from harness.strategies.base import Solution, solve_then_play
from harness.training.pairs import Pair

AGENT = "policy"
"""The one adapter of a one-agent strategy."""


def one_pass(backend: Backend, prompter: Prompter, records: list[Record], adapter: str | None, budget: int,
             temperature: float, top_p: float, seeds: list[int]) -> list[Solution]:
    """One sampled answer per record (record i drawn with seed i) from a reset cache (so it never depends on
    earlier calls), in one call."""
    backend.reset_cache(adapter)
    prompts = [prompter.answer_prompt(r.question) for r in records]
    samples = backend.generate(prompts, adapter, budget, temperature, top_p, n=1, seed=list(seeds))
    out = []
    for record, prompt, seed, (sample,) in zip(records, prompts, seeds, samples):
        text = prompter.tokenizer.decode(sample.token_ids, skip_special_tokens=True)
        result = grade(text, record.answer, record.task)
        out.append(Solution(record=record, prompt_ids=prompt, answer_ids=sample.token_ids, text=text,
                            extracted=result.extracted, correct=result.correct, tokens=len(sample.token_ids),
                            seed=seed, log={"end": "eos" if sample.finished else "length"}))
    return out


def zero_shot(engine, cfg: StrategyConfig, records: list[Record], seeds: list[int]) -> list[Solution]:
    """The zero-shot curve's answers: the base model (adapters disabled) in one pass, sampled as the strategy
    (`cfg`) samples its policy."""
    return one_pass(engine.backend, engine.prompter, records, None, engine.base_answer_budget(), cfg.temperature,
                    cfg.top_p, seeds)


class OnePassPolicy:
    """Base of the one-agent strategies: answers are one-pass samples of the `policy` adapter."""

    def __init__(self, cfg: PolicyConfig, engine) -> None:
        self.cfg = cfg
        self.agents = cfg.agents()
        self.backend, self.prompter, self.tokenizer = engine.backend, engine.prompter, engine.tokenizer

    def solve(self, records: list[Record], seeds: list[int], trained: bool = True,
              temperature: float | None = None) -> list[Solution]:
        return one_pass(self.backend, self.prompter, records, AGENT if trained else None, self.cfg.max_new_tokens,
                        self.cfg.temperature if temperature is None else temperature, self.cfg.top_p, seeds)

    explore = solve_then_play


def whole_answer_pairs(right: list[Solution], wrong: list[Solution], most: int, node: str) -> list[Pair]:
    """Up to `most` pairs, the i-th correct answer against the i-th wrong one (each answer used once), the whole
    answers as completions of the question's prompt."""
    return [Pair(agent=AGENT, prompt_ids=good.prompt_ids, chosen_ids=good.answer_ids, rejected_ids=bad.answer_ids,
                 node=node) for good, bad in list(zip(right, wrong))[:most]]

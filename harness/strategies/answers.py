"""One-pass answers: the policy (or the base model) writes a whole answer in one generation, graded.

Every strategy's single-agent progressive validation, the zero-shot curve, the baseline stage and the compile
stage's policy traces are this; only Flow-DPO answers through its Flow.
"""

from __future__ import annotations

from harness.data import Record
from harness.evaluation.grading import grade
from harness.generation.backend import Backend
from harness.generation.prompts import Prompter
from harness.seeds import round_seed
from harness.strategies.base import Solution


def one_pass(backend: Backend, prompter: Prompter, records: list[Record], adapter: str | None, budget: int,
             temperature: float, top_p: float, seed: int) -> list[Solution]:
    """One sampled answer per record from a reset cache (so it never depends on earlier calls), in one call."""
    backend.reset_cache(adapter)
    prompts = [prompter.answer_prompt(r.question) for r in records]
    samples = backend.generate(prompts, adapter, budget, temperature, top_p, n=1, seed=round_seed(seed, 0))
    out = []
    for record, prompt, (sample,) in zip(records, prompts, samples):
        text = prompter.tokenizer.decode(sample.token_ids, skip_special_tokens=True)
        result = grade(text, record.answer, record.task)
        out.append(Solution(record=record, prompt_ids=prompt, answer_ids=sample.token_ids, text=text,
                            extracted=result.extracted, correct=result.correct, tokens=len(sample.token_ids),
                            log={"end": "eos" if sample.finished else "length"}))
    return out

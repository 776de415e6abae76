"""Stage `baseline`: the base model answers every compile prompt in one pass (zero-shot, n samples each).

Its correct answers are the "self-generated" SFT set of the compile stage; its accuracy is the zero-shot row.
"""

from __future__ import annotations

import time

from harness.config.recipe import Recipe
from harness.data.records import load_source
from harness.generation.engine import Engine
from harness.run.batches import run_batches
from harness.run.folder import RunDir
from harness.run.seeds import seed_for
from harness.strategies.one_pass import one_pass

STAGE = "baseline"


def run_baseline(recipe: Recipe, run: RunDir, engine: Engine) -> dict:
    if run.is_done(STAGE):
        return run.summary(STAGE)
    cfg = recipe.baseline
    start = time.perf_counter()
    loaded = load_source(recipe.data.compile)
    run.check_data("compile", recipe.data.compile.source, loaded.fingerprint())
    engine.check_prompts(loaded.records, recipe.data.compile.source)
    jobs = [(record, k) for record in loaded.records for k in range(cfg.samples)]

    def work(number: int, batch) -> list[dict]:
        answers = one_pass(engine.backend, engine.prompter, [r for r, _ in batch], None, engine.base_answer_budget(),
                           cfg.temperature, recipe.strategy.top_p,
                           [seed_for(recipe.online.seed, STAGE, r.id, k) for r, k in batch])
        return [{"id": r.id, "sample": k, "prompt_ids": a.prompt_ids, "answer_ids": a.answer_ids,
                 "text": a.text, "extracted": a.extracted, "correct": a.correct, **a.log}
                for (r, k), a in zip(batch, answers)]

    lines = run_batches(run.stage(STAGE) / "traces.jsonl", jobs, cfg.batch_size, work)
    correct = sum(line["correct"] for line in lines)
    summary = {"questions": len(loaded.records), "samples": cfg.samples, "n": len(lines), "correct": correct,
               "accuracy": correct / len(lines) if lines else 0.0,
               "unparsed": sum(line["extracted"] is None for line in lines),
               "skipped_rows": loaded.skipped, "seconds": time.perf_counter() - start}
    run.mark_done(STAGE, summary)
    return summary

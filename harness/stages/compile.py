"""Stage `compile`: three SFT sets on the same compile prompts, and one LoRA SFT of the base model per set.

Sets (PAPERS.md §1, compile phase), all as token ids `{id, prompt_ids, completion_ids}`:
  flow          correct traces of the trained Flow (its chunks concatenated, exactly as generated);
  self          correct single-pass answers of the base model (the baseline stage's traces);
  ground_truth  the dataset's solutions (dataset text: the one place text is tokenized into a target).
SFT is TRL's SFTTrainer on the pre-tokenized sets with the loss on the completion only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness.batches import run_batches
from harness.data import load_source
from harness.engine import Engine
from harness.flow import Flow
from harness.recipe import Recipe, SFTConfig
from harness.rundir import RunDir, RunError, read_jsonl, write_json, write_jsonl
from harness.seeds import seed_for
from harness.stages.online import load_trained_adapters

STAGE = "compile"


def run_compile(recipe: Recipe, run: RunDir, engine: Engine) -> dict:
    if run.is_done(STAGE):
        return run.summary(STAGE)
    folder = run.stage(STAGE)
    records = load_source(recipe.data.compile).records
    sets = {}
    for source in recipe.compile.sources:
        path = folder / f"sft_{source}.jsonl"
        if not path.is_file():
            examples = collect(source, recipe, run, engine, records)
            write_jsonl(path, examples)
        sets[source] = read_jsonl(path)
    stats = {source: set_stats(examples, len(records)) for source, examples in sets.items()}
    write_json(folder / "sets.json", stats)

    trained = {}
    for source, examples in sets.items():
        out = folder / f"sft-{source}"
        if not (out / "done.json").is_file():
            result = sft(engine, examples, recipe.compile.sft, out)
            write_json(out / "done.json", result)
        trained[source] = json.loads((out / "done.json").read_text())
    summary = {"sets": stats, "sft": trained, "prompts": [r.id for r in records]}
    run.mark_done(STAGE, summary)
    return summary


def collect(source: str, recipe: Recipe, run: RunDir, engine: Engine, records) -> list[dict]:
    """The correct traces (or solutions) of one source, on the compile prompts."""
    if source == "ground_truth":
        eos = engine.tokenizer.eos_token_id
        return [{"id": r.id, "prompt_ids": engine.prompter.answer_prompt(r.question),
                 "completion_ids": engine.prompter.encode(r.solution) + [eos]}
                for r in records if r.solution]
    if source == "self":
        if not run.is_done("baseline"):
            raise RunError("compile source `self` needs the baseline stage: run `harness run baseline` first")
        return [{"id": line["id"], "prompt_ids": line["prompt_ids"], "completion_ids": line["answer_ids"],
                 "chunks": 1} for line in read_jsonl(run.path / "baseline" / "traces.jsonl") if line["correct"]]
    load_trained_adapters(run.path / "online", engine.model)
    engine.backend.adapters_updated(["answer", "stop"])
    flow = Flow(engine.backend, engine.prompter, recipe.flow, "answer", "stop")
    jobs = [r for r in records for _ in range(recipe.compile.flow_samples)]

    def work(number: int, batch) -> list[dict]:
        traces = flow.run([flow.start(r.question, r.answer, r.task) for r in batch],
                          seed_for(recipe.online.seed, STAGE, number))
        return [{"id": r.id, "correct": t.correct, "prompt_ids": t.prompt_ids, "completion_ids": t.answer_ids,
                 "chunks": len(t.chunks), "end": t.end} for r, t in zip(batch, traces)]

    lines = run_batches(run.stage(STAGE) / "flow_traces.jsonl", jobs, recipe.baseline.batch_size, work)
    return [{k: line[k] for k in ("id", "prompt_ids", "completion_ids", "chunks")} for line in lines
            if line["correct"]]


def set_stats(examples: list[dict], prompts: int) -> dict:
    n = len(examples)
    return {
        "prompts": prompts,
        "examples": n,
        "prompts_covered": len({e["id"] for e in examples}),
        "mean_tokens": sum(len(e["completion_ids"]) for e in examples) / n if n else 0.0,
        "mean_chunks": sum(e.get("chunks", 1) for e in examples) / n if n else 0.0,
    }


def sft(engine: Engine, examples: list[dict], cfg: SFTConfig, out: Path) -> dict:
    """LoRA SFT of a fresh copy of the base model on one set; saves the adapter in `out/adapter`."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from harness.models import load_base, lora_config

    start = time.perf_counter()
    if not examples:
        return {"adapter": None, "examples": 0, "train_loss": None, "seconds": 0.0,
                "note": "no correct traces: nothing to train on"}
    base, tokenizer = load_base(engine.recipe.model)
    rows = [{"input_ids": e["prompt_ids"] + e["completion_ids"],
             "completion_mask": [0] * len(e["prompt_ids"]) + [1] * len(e["completion_ids"])} for e in examples]
    args = TRLSFTConfig(
        output_dir=str(out / "trainer"),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of total steps in transformers 5
        max_grad_norm=cfg.grad_clip,
        seed=cfg.seed,
        data_seed=cfg.seed,
        completion_only_loss=True,
        max_length=None,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=engine.recipe.model.dtype == "bfloat16",
        use_cpu=engine.recipe.model.device == "cpu",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=base, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora_config(cfg.lora))
    result = trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    return {"adapter": str(out / "adapter"), "examples": len(examples), "train_loss": result.training_loss,
            "steps": result.global_step, "seconds": time.perf_counter() - start,
            "log": trainer.state.log_history}

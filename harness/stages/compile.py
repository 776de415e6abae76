"""Stage `compile`: three SFT sets on the same compile prompts, and one LoRA SFT of the base model per set.

Sets (Flow-DPO, arXiv 2410.22304 §3.3, the compile phase), all as token ids `{id, prompt_ids, completion_ids}`:
  flow          correct answers of the trained policy (Flow-DPO: its Flow, chunks concatenated as generated);
  self          correct single-pass answers of the base model (the baseline stage's traces);
  ground_truth  the dataset's solutions (dataset text: the one place text is tokenized into a target).
Every completion ends with an end id, whatever ended its generation (Stop, `max_chunks`, a single pass's budget):
the one it was generated with, else the chat template's own end of turn. An SFT model must learn to end its
answer. The Flow traces are sampled at `compile.temperature`, the self traces at
`baseline.temperature` (the report shows both).

SFT is TRL's SFTTrainer on the pre-tokenized sets with the loss on the completion only. The generation engine is
closed before the first SFT, so its memory is free for the SFT copy. The global batch is exactly
`batch_size * grad_accum` on one device or many (`accelerate launch`: each of N processes takes batch_size / N).
With several devices and one process (`runtime.sft_devices`, or two or more visible GPUs), the SFTs run at once,
each in a child process of its own on one device.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from transformers import TrainerCallback

from harness.config.recipe import Recipe
from harness.data.records import load_source
from harness.errors import RunError
from harness.generation.lazy import LazyEngine
from harness.modeling.models import chat_example, free_memory, resolve_device
from harness.run.batches import run_batches
from harness.run.console import ProgressBar
from harness.run.distributed import is_main, local_rank, pin_device, wait_for, world_size
from harness.run.folder import RunDir, read_jsonl, write_json, write_jsonl
from harness.run.metrics import open_metrics
from harness.run.seeds import seed_for
from harness.strategies import build_strategy
from harness.training.checkpoints import load_trained_adapters

STAGE = "compile"


def run_compile(recipe: Recipe, run: RunDir, engine: LazyEngine) -> dict:
    if run.is_done(STAGE):
        return run.summary(STAGE)
    folder = run.stage(STAGE)
    loaded = load_source(recipe.data.compile)
    run.check_data("compile", recipe.data.compile.source, loaded.fingerprint())
    records = loaded.records
    if is_main():
        for source in recipe.compile.sources:
            path = folder / f"sft_{source}.jsonl"
            if not path.is_file():
                write_jsonl(path, collect(source, recipe, run, engine, records))
        engine.close()
    else:
        wait_for(folder / "sets.json", "the SFT sets")  # written once every set is
    sets = {source: read_jsonl(folder / f"sft_{source}.jsonl") for source in recipe.compile.sources}
    stats = {source: set_stats(examples, len(records)) for source, examples in sets.items()}
    if is_main():
        write_json(folder / "sets.json", stats)

    missing = {s: examples for s, examples in sets.items() if not (folder / f"sft-{s}" / "done.json").is_file()}
    devices = child_devices(recipe) if missing else []
    if devices:
        train_in_children(recipe, missing, folder, devices)
    trained = {}
    metrics = open_metrics(recipe, run.path)
    for source, examples in sets.items():
        out = folder / f"sft-{source}"
        if not (out / "done.json").is_file():
            result = sft(recipe, examples, out, sft_device(recipe))
            if is_main():
                write_json(out / "done.json", result)
            else:
                wait_for(out / "done.json", f"SFT {source}")
        trained[source] = json.loads((out / "done.json").read_text())
        metrics.sft(source, trained[source].get("log", []))
    metrics.close()
    sampling = {"flow": {"temperature": recipe.compile.temperature, "samples": recipe.compile.flow_samples},
                "self": {"temperature": recipe.baseline.temperature, "samples": recipe.baseline.samples}}
    summary = {"sets": stats, "sft": trained, "sampling": sampling, "prompts": [r.id for r in records]}
    if is_main():
        run.mark_done(STAGE, summary)
    return summary


def with_eos(ids: list[int], eos: int, ends: list[int]) -> list[int]:
    """The completion as SFT target: ending with an end id (the one it ended with, else `eos` appended)."""
    return ids if ids and ids[-1] in ends else [*ids, eos]


def target_end_id(recipe: Recipe, tokenizer) -> int:
    """The id an SFT target ends with: the chat template's own end of turn (Phi-3 <|end|>, not its tokenizer's
    <|endoftext|>), or the tokenizer's EOS for plain-text prompts."""
    if not recipe.model.chat_template:
        return tokenizer.eos_token_id
    return chat_example(tokenizer, "q", "a")[1][-1]


def collect(source: str, recipe: Recipe, run: RunDir, lazy: LazyEngine, records) -> list[dict]:
    """The correct traces (or solutions) of one source, on the compile prompts."""
    if source == "self":
        if not run.is_done("baseline"):
            raise RunError("compile source `self` needs the baseline stage: run `harness run baseline` first")
        lines = [line for line in read_jsonl(run.path / "baseline" / "traces.jsonl") if line["correct"]]
        if not lines:
            return []
    engine = lazy.get(run)
    eos, ends = target_end_id(recipe, engine.tokenizer), engine.backend.eos_token_ids
    if source == "ground_truth":
        return [{"id": r.id, "prompt_ids": engine.prompter.answer_prompt(r.question),
                 "completion_ids": engine.prompter.encode(r.solution) + [eos]}
                for r in records if r.solution]
    if source == "self":
        return [{"id": line["id"], "prompt_ids": line["prompt_ids"],
                 "completion_ids": with_eos(line["answer_ids"], eos, ends), "chunks": 1} for line in lines]
    load_trained_adapters(run.path / "online", engine.model)
    strategy = build_strategy(recipe.strategy, engine)
    engine.backend.adapters_updated(strategy.agents)
    cfg = recipe.compile
    jobs = [(r, k) for r in records for k in range(cfg.flow_samples)]

    def work(number: int, batch) -> list[dict]:
        solutions = strategy.solve([r for r, _ in batch], [seed_for(cfg.seed, STAGE, r.id, k) for r, k in batch],
                                   temperature=cfg.temperature)
        return [{"id": r.id, "correct": s.correct, "prompt_ids": s.prompt_ids, "completion_ids": s.answer_ids,
                 "chunks": s.log.get("chunks", 1), "end": s.log.get("end")} for (r, _), s in zip(batch, solutions)]

    lines = run_batches(run.stage(STAGE) / "flow_traces.jsonl", jobs, cfg.batch_size, work)
    return [{"id": line["id"], "prompt_ids": line["prompt_ids"], "chunks": line["chunks"],
             "completion_ids": with_eos(line["completion_ids"], eos, ends)} for line in lines if line["correct"]]


def set_stats(examples: list[dict], prompts: int) -> dict:
    n = len(examples)
    return {
        "prompts": prompts,
        "examples": n,
        "prompts_covered": len({e["id"] for e in examples}),
        "mean_tokens": sum(len(e["completion_ids"]) for e in examples) / n if n else 0.0,
        "mean_chunks": sum(e.get("chunks", 1) for e in examples) / n if n else 0.0,
    }


def sft(recipe: Recipe, examples: list[dict], out: Path, device: str) -> dict:
    """LoRA SFT of a fresh copy of the base model on one set, on `device`; saves the adapter in `out/adapter`."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from harness.modeling.models import load_base, lora_config

    cfg = recipe.compile.sft
    start = time.perf_counter()
    if not examples:
        return {"adapter": None, "examples": 0, "train_loss": None, "seconds": 0.0,
                "note": "no correct traces: nothing to train on"}
    base, tokenizer = load_base(recipe.model, device)
    rows = [{"input_ids": e["prompt_ids"] + e["completion_ids"],
             "completion_mask": [0] * len(e["prompt_ids"]) + [1] * len(e["completion_ids"])} for e in examples]
    args = TRLSFTConfig(
        output_dir=str(out / "trainer"),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=per_device_batch(cfg.batch_size, world_size()),
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
        bf16=recipe.model.dtype == "bfloat16",
        use_cpu=device == "cpu",
        # named only when on: transformers 5.23 warns that the name is going (its successor is not in 5.0)
        **({"gradient_checkpointing": True} if recipe.runtime.gradient_checkpointing else {}),
        disable_tqdm=True,
    )
    if world_size() == 1 and args.device.type == "cuda":
        # One process seeing several GPUs wraps nn.DataParallel and multiplies the global batch by their count; no
        # public field turns that off. `args.device` has set `_n_gpu` (to the visible GPU count) by now, so this
        # sticks: one process trains on one device, several devices go through `accelerate launch`.
        args._n_gpu = 1
    trainer = SFTTrainer(model=base, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora_config(cfg.lora))
    trainer.remove_callback(PrinterCallback)  # the step log is kept in done.json, not printed
    trainer.add_callback(ShowProgress(f"sft-{out.name.removeprefix('sft-')}"))
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        trainer.model.save_pretrained(out / "adapter", save_embedding_layers=False)
    # relative to the run folder (out is RUN/compile/sft-<source>), so a moved or copied run folder still finds it
    adapter = (out / "adapter").relative_to(out.parent.parent)
    summary = {"adapter": str(adapter), "examples": len(examples), "train_loss": result.training_loss,
               "steps": result.global_step, "seconds": time.perf_counter() - start,
               "global_batch": args.per_device_train_batch_size * world_size() * cfg.grad_accum,
               "log": trainer.state.log_history}
    del trainer, base
    free_memory()
    return summary


class ShowProgress(TrainerCallback):
    """The SFT's step and loss on the console's progress display."""

    def __init__(self, desc: str) -> None:
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if is_main():
            self.bar = ProgressBar(self.desc, state.max_steps, "step")

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.update(state.global_step - self.bar.done, loss=f"{logs['loss']:.3f}")

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.done)
            self.bar.close()


def sft_device(recipe: Recipe) -> str:
    """Where the SFT copy is loaded when the SFTs run in this process: where its trainer runs it (this rank's GPU
    under a distributed launch, the first visible GPU in one process: the generation engine is closed by then), so
    copies are never stacked on one device."""
    import torch

    if resolve_device(recipe.runtime.device).type == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{local_rank()}"


def child_devices(recipe: Recipe) -> list[str]:
    """The devices the SFTs run on at once, each SFT in a child process: `runtime.sft_devices`, else every visible
    GPU when there are two or more; [] to train them in this process, one after another (on one device, or with
    every rank of a distributed launch)."""
    import torch

    chosen = recipe.runtime.sft_devices
    if world_size() > 1:
        if chosen is not None:
            raise RunError(
                "runtime.sft_devices runs the SFTs in child processes of one process: leave it unset under a "
                "distributed launch, whose ranks train each SFT together"
            )
        return []
    gpus = torch.cuda.device_count()
    if chosen is None:
        return [f"cuda:{i}" for i in range(gpus)] if gpus > 1 and sft_device(recipe) != "cpu" else []
    unseen = [d for d in chosen if d != "cpu" and int(d.removeprefix("cuda:")) >= gpus]
    if unseen:
        raise RunError(f"runtime.sft_devices: {unseen} are not among the {gpus} GPUs this process sees")
    return chosen


def train_in_children(recipe: Recipe, sets: dict[str, list[dict]], folder: Path, devices: list[str]) -> None:
    """Train `sets` at once, one child process per device (more sets than devices wait for a free one), and write
    each `done.json` here as the SFT in this process does, so that a killed run resumes with the missing ones."""
    # Each SFT is an independent job with its own seeds: on one device each, three SFTs take the time of one, and give
    # the models one after another gives (on the CPU, up to the rounding of another thread count). Spawned, not
    # forked: a fork would copy this process's CUDA state.
    children = min(len(devices), len(sets))
    context = multiprocessing.get_context("spawn")
    free = context.Queue()
    for device in devices[:children]:
        free.put(visible_gpus(device))
    threads = max(1, (os.cpu_count() or 1) // children)  # CPU children share the cores rather than oversubscribe
    bar = ProgressBar("compile", len(sets), "SFT")
    errors: dict[str, BaseException] = {}
    with ProcessPoolExecutor(children, mp_context=context, initializer=pin_device,
                             initargs=(free, threads, os.getpid())) as pool:
        jobs = {pool.submit(sft_in_child, recipe, ex, folder / f"sft-{source}"): source for source, ex in sets.items()}
        for job in as_completed(jobs):
            source = jobs[job]
            if job.exception() is not None:
                errors[source] = job.exception()
                continue
            write_json(folder / f"sft-{source}" / "done.json", job.result())
            bar.update(last=source)
    bar.close()
    if errors:
        source, error = next(iter(errors.items()))
        raise RunError(
            f"SFT {', '.join(errors)} failed in a child process ({source}: {error!r}); the other SFTs are done, "
            "and a rerun trains only the failed ones"
        ) from error


def visible_gpus(device: str) -> str:
    """CUDA_VISIBLE_DEVICES of a child that trains on `device`: the one GPU this process calls `cuda:N` (its own
    CUDA_VISIBLE_DEVICES may renumber them), or none for `cpu`."""
    if device == "cpu":
        return ""
    index = int(device.removeprefix("cuda:"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[index].strip() if visible else str(index)


def sft_in_child(recipe: Recipe, examples: list[dict], out: Path) -> dict:
    """`sft` in a child process, on the one GPU `pin_device` left visible, or on the CPU where it left none."""
    import torch

    if not os.environ["CUDA_VISIBLE_DEVICES"]:
        return sft(recipe, examples, out, "cpu")
    if torch.cuda.device_count() != 1:  # an import started CUDA before pin_device: every SFT would share a GPU
        raise RunError(f"CUDA started before this SFT process pinned its GPU: it sees {torch.cuda.device_count()}")
    return sft(recipe, examples, out, "cuda:0")


def per_device_batch(global_per_step: int, processes: int) -> int:
    """Examples per device and micro-step so that all devices together take `global_per_step`."""
    if global_per_step % processes:
        raise RunError(f"compile.sft.batch_size {global_per_step} cannot be split evenly over {processes} processes")
    return global_per_step // processes

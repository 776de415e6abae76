"""Stage `online`: Flow-DPO online learning with progressive validation, checkpointed and resumable.

A flat loop, read top to bottom. For each training question, in stream order:
  1. the trained Flow answers it (this is its progressive-validation score: it has not learned from it yet);
     the frozen Flow and the zero-shot single model answer it too, when the recipe asks for those curves;
  2. one rollout from every node of the main chain, all in one batch; pairs where correctness differs;
  3. each agent's learner queues its pairs and steps: right away on them (`online.update: per_question`, the
     paper's real-time updates) or whenever a full batch is there (`accumulate`);
  4. one line goes to progress.jsonl; every `checkpoint_every` questions a checkpoint is written.
Every random draw is seeded from (recipe seed, question index), so a run resumed from a checkpoint repeats the
lines after it exactly and ends with the same log and adapter weights as a run never killed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from harness.console import Progress, percent
from harness.data import load_source
from harness.engine import Engine
from harness.flow import Flow, FlowStats
from harness.flow_rollout import make_pairs, new_tokens, rollouts_many, stop_calls
from harness.learner import DPOLearner, NonFiniteLoss
from harness.metrics import open_metrics
from harness.models import adapter_state, load_adapter_state
from harness.recipe import Recipe
from harness.rundir import RunDir, RunError, read_jsonl, write_atomic, write_json
from harness.seeds import seed_for

STAGE = "online"


def run_online(recipe: Recipe, run: RunDir, engine: Engine) -> dict:
    if run.is_done(STAGE):
        return run.summary(STAGE)
    cfg = recipe.online
    folder = run.stage(STAGE)
    loaded = load_source(recipe.data.train)
    stream = loaded.records[: cfg.questions]
    model = engine.model
    learners = {a: DPOLearner(model, a, cfg, engine.tokenizer.pad_token_id, recipe.runtime.dpo_micro_batch_tokens)
                for a in cfg.train_agents}
    sleepy = recipe.runtime.vllm.sleep_during_updates and hasattr(engine.backend, "sleep")
    trained = Flow(engine.backend, engine.prompter, recipe.flow, "answer", "stop")
    # LoRA starts at zero (B = 0), so the never-updated Flow is the Flow with adapters disabled.
    frozen = Flow(engine.backend, engine.prompter, recipe.flow, None, None)

    start = load_checkpoint(folder, model, learners)
    if start:
        engine.backend.adapters_updated(["answer", "stop"])
    progress = folder / "progress.jsonl"
    # Lines written after the checkpoint (perhaps a torn last one) are dropped and recomputed identically.
    kept = progress.read_text().splitlines()[:start] if progress.is_file() else []
    if len(kept) < start:
        raise RunError(f"{progress} has {len(kept)} lines but the checkpoint is at question {start}")
    write_atomic(progress, "".join(raw + "\n" for raw in kept))

    seen = [json.loads(raw) for raw in kept]
    shown = Progress("online", len(stream), "question", initial=start)
    # A resumed stage replays its kept lines, so its curves read as one never killed (a crash loses only the points
    # the sink had not flushed, which the resumed stage writes again).
    metrics = open_metrics(recipe, run.path)
    for line in seen:
        metrics.question(line)
    for first in range(start, len(stream), cfg.question_batch):
        group = stream[first : first + cfg.question_batch]
        seed = seed_for(cfg.seed, first)
        share = 1 / len(group)  # a group's generation time is split evenly over its questions
        trained.stats = FlowStats()

        t0 = time.perf_counter()
        mains = trained.run([trained.start(r.question, r.answer, r.task) for r in group], seed)
        main_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        curves: dict[str, list[bool]] = {}
        if "frozen" in cfg.curves:
            curves["frozen_correct"] = [t.correct for t in frozen.run(
                [frozen.start(r.question, r.answer, r.task) for r in group], seed)]
        if "zero_shot" in cfg.curves:
            curves["zero_shot_correct"] = [t.correct for t in engine.single_pass(group, recipe.flow.temperature, seed)]
        curves_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        branches = rollouts_many(trained, mains, cfg.rollouts_per_node, cfg.max_resample_tries,
                                 seed_for(seed, "rollout"))
        rollout_seconds = time.perf_counter() - t0

        group_pairs = [make_pairs(trained, main, own) for main, own in zip(mains, branches)]
        asleep = sleepy and any(learner.due_after([p for pairs in group_pairs for p in pairs])
                                for learner in learners.values())
        if asleep:
            engine.backend.sleep()  # frees the engine's GPU memory for the DPO steps
        updated: set[str] = set()
        for k, (record, main, own, pairs) in enumerate(zip(group, mains, branches, group_pairs)):
            index = first + k
            t0 = time.perf_counter()
            updates = learn(learners, pairs, seed_for(cfg.seed, index), f"question {index} ({record.id})", folder)
            updated |= set(updates)
            line = {
                "index": index,
                "id": record.id,
                "correct_before": main.correct,
                **{key: values[k] for key, values in curves.items()},
                "chunks": len(main.chunks),
                "end": main.end,
                "extracted": main.extracted,
                "nodes": len(own),
                "pairs": {a: sum(p.agent == a for p in pairs) for a in ("answer", "stop")},
                "pair_nodes": [p.node for p in pairs],
                "updates": updates,
                "tokens": len(main.answer_ids) + main.discarded_tokens + new_tokens(own),
                "stop_decisions": stop_calls(main, own),
                "generate_seconds": main_seconds * share,
                "curves_seconds": curves_seconds * share,
                "rollout_seconds": rollout_seconds * share,
                "answer_gen_seconds": trained.stats.generate_seconds * share,
                "stop_seconds": trained.stats.stop_seconds * share,
                "update_seconds": time.perf_counter() - t0,
            }
            with progress.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            seen.append(line)
            metrics.question(line)
            shown.update(1, **live_numbers(seen))
        if asleep:
            engine.backend.wake_up()
        if updated:  # nothing generates between a group's updates: vLLM serves the new weights from the next group
            engine.backend.adapters_updated(sorted(updated))
        end = first + len(group)
        if end % cfg.checkpoint_every == 0 or end == len(stream):
            save_checkpoint(folder, model, learners, end)

    shown.close()
    metrics.close()
    adapters = folder / "adapters"
    for name in ("answer", "stop"):
        model.save_pretrained(adapters, selected_adapters=[name])
    summary = summarize(read_jsonl(progress))
    summary |= {"skipped_rows": loaded.skipped, "adapters": str(adapters)}
    run.mark_done(STAGE, summary)
    return summary


def learn(learners: dict[str, DPOLearner], pairs: list, seed: int, where: str, folder: Path) -> dict:
    """Queue the question's pairs with each agent's learner; step every learner whose batch is full."""
    updates: dict[str, list[dict]] = {}
    for agent, learner in learners.items():
        learner.add(pairs)
        while learner.ready():
            try:
                updates.setdefault(agent, []).append(learner.step(seed_for(seed, agent, learner.steps)))
            except NonFiniteLoss as err:
                raise NonFiniteLoss(f"{err}; {where}; the last good checkpoint in {folder / 'checkpoint'} is kept "
                                    "(resuming replays the same steps: change the recipe in a new run folder)"
                                    ) from err
    return updates


def live_numbers(lines: list[dict]) -> dict[str, str]:
    """What the progress display shows: running accuracy of each curve, pairs per agent, the last DPO loss and the
    generation speed."""
    numbers = {}
    for key, name in (("correct_before", "trained"), ("frozen_correct", "frozen"), ("zero_shot_correct", "0-shot")):
        marks = [line[key] for line in lines if key in line]
        if marks:
            numbers[name] = percent(sum(marks), len(marks))
    numbers["pairs"] = "/".join(str(sum(line["pairs"][a] for line in lines)) for a in ("answer", "stop"))
    losses = [step["loss"] for line in lines for steps in line["updates"].values() for step in steps]
    if losses:
        numbers["loss"] = f"{losses[-1]:.3f}"
    seconds = sum(line["generate_seconds"] + line["rollout_seconds"] for line in lines)
    if seconds:
        numbers["tok/s"] = f"{sum(line['tokens'] for line in lines) / seconds:.0f}"
    return numbers


def summarize(lines: list[dict]) -> dict:
    n = len(lines)

    def rate(key: str) -> float | None:
        vals = [line[key] for line in lines if key in line]
        return sum(vals) / len(vals) if vals else None

    return {
        "questions": n,
        "progressive_accuracy": rate("correct_before"),
        "frozen_accuracy": rate("frozen_correct"),
        "zero_shot_accuracy": rate("zero_shot_correct"),
        "pairs": {a: sum(line["pairs"][a] for line in lines) for a in ("answer", "stop")},
        "tokens": sum(line["tokens"] for line in lines),
        "seconds": {k: sum(line[k] for line in lines) for k in lines[0] if k.endswith("_seconds")} if lines else {},
    }


def save_checkpoint(folder: Path, model, learners: dict[str, DPOLearner], position: int) -> None:
    """Write ckpt-<position>/ completely, then point `checkpoint/latest` at it atomically."""
    root = folder / "checkpoint"
    target = root / f"ckpt-{position:06d}"
    tmp = root / f".tmp-{position:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({name: adapter_state(model, name) for name in ("answer", "stop")}, tmp / "adapters.pt")
    torch.save({agent: learner.state_dict() for agent, learner in learners.items()}, tmp / "learners.pt")
    write_json(tmp / "state.json", {"position": position})
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    write_json(root / "latest.json", {"checkpoint": target.name, "position": position})
    for old in [*root.glob("ckpt-*"), *root.glob(".tmp-*")]:  # superseded, or left by a killed save
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, model, learners: dict[str, DPOLearner]) -> int:
    """Restore adapters and learners from the latest checkpoint; the stream position to go on from."""
    latest = folder / "checkpoint" / "latest.json"
    if not latest.is_file():
        return 0
    meta = json.loads(latest.read_text())
    ckpt = folder / "checkpoint" / meta["checkpoint"]
    load_adapters_file(ckpt / "adapters.pt", model)
    states = torch.load(ckpt / "learners.pt")
    for agent, learner in learners.items():
        learner.load_state_dict(states[agent])
    return meta["position"]


def load_trained_adapters(folder: Path, model) -> None:
    """Put the finished online stage's adapters (its last checkpoint, bit-exact) on `model`."""
    if not (folder / "done.json").is_file():
        raise RunError(f"{folder} has no finished online stage: run `harness run online` first")
    meta = json.loads((folder / "checkpoint" / "latest.json").read_text())
    load_adapters_file(folder / "checkpoint" / meta["checkpoint"] / "adapters.pt", model)


def load_adapters_file(path: Path, model) -> None:
    for name, state in torch.load(path).items():
        load_adapter_state(model, name, state)

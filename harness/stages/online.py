"""Stage `online`: online preference learning with progressive validation, checkpointed and resumable.

A flat loop over groups of training questions (`online.question_batch`; `windows`), in stream order; the paper
method is the strategy (harness/strategies/), which this stage knows only through its protocol:
  1. explore: the trained policy answers the group (its progressive-validation score: it has not learned from
     these questions yet) and the strategy explores from those answers for each question's preference pairs (the
     frozen policy's and the zero-shot model's answers, when the recipe asks for those curves, are measured
     before the loop: neither changes during the stream);
  2. learn: each agent's learner queues its pairs and steps (`online.dpo.update`: right away on each question's
     pairs, whenever a full batch is there, or after the whole stream for `epochs` passes);
  3. log: one line per question goes to progress.jsonl; every `checkpoint_every` questions a checkpoint is written.
Every random draw is seeded from (recipe seed, question index) and where it happens, never from the batch it
is in: a run resumed from a checkpoint repeats the lines after it exactly and ends with the same log and adapter
weights as a run never killed. The trained, frozen and zero-shot answers of a question share its seed, so where
the adapters are still the base model's (or `lr` is 0) the three curves agree question by question.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from harness.batches import run_batches
from harness.console import Progress, percent
from harness.data import load_source
from harness.generation.engine import Engine
from harness.generation.workers import WorkerPool, generation_pool
from harness.metrics import open_metrics
from harness.models import adapter_state, load_adapter_state
from harness.progress import CURVES, ProgressLine
from harness.recipe import Recipe
from harness.rundir import RunDir, RunError, read_jsonl, write_atomic, write_json
from harness.seeds import seed_for
from harness.strategies import build_strategy
from harness.strategies.answers import zero_shot
from harness.training.learner import DPOLearner, NonFiniteLoss

STAGE = "online"


def run_online(recipe: Recipe, run: RunDir, engine: Engine) -> dict:
    if run.is_done(STAGE):
        return run.summary(STAGE)
    with generation_pool(recipe, engine) as pool:
        return train_online(recipe, run, engine, pool)


def train_online(recipe: Recipe, run: RunDir, engine: Engine, pool: WorkerPool | None) -> dict:
    """The stage; `pool`: the generation workers the strategy runs on (None: in-process, on `engine`)."""
    cfg = recipe.online
    folder = run.stage(STAGE)
    loaded = load_source(recipe.data.train)
    stream = loaded.records[: cfg.questions]
    model = engine.model
    agents = cfg.strategy.agents()
    generation = pool or build_strategy(cfg.strategy, engine)  # with workers, the driver generates nothing
    learners = {a: DPOLearner(model, a, cfg.dpo, engine.tokenizer.pad_token_id, recipe.runtime.dpo_micro_batch_tokens)
                for a in cfg.train_agents()}
    sleepy = pool is None and recipe.runtime.vllm.sleep_during_updates and hasattr(engine.backend, "sleep")

    start, epochs_done = load_checkpoint(folder, model, learners)
    if start:
        adapters_updated(engine, pool, agents)
    progress = folder / "progress.jsonl"
    # Lines written after the checkpoint (perhaps a torn last one) are dropped and recomputed identically.
    kept = progress.read_text().splitlines()[:start] if progress.is_file() else []
    if len(kept) < start:
        raise RunError(f"{progress} has {len(kept)} lines but the checkpoint is at question {start}")
    write_atomic(progress, "".join(raw + "\n" for raw in kept))

    seen = [json.loads(raw) for raw in kept]
    base_answers = pool.zero_shot if pool else functools.partial(zero_shot, engine)
    curves = measure_curves(recipe, folder, generation, base_answers, stream)
    shown = Progress("online", len(stream), "question", initial=start)
    # A resumed stage replays its kept lines, so its curves read as one never killed (a crash loses only the points
    # the sink had not flushed, which the resumed stage writes again).
    metrics = open_metrics(recipe, run.path)
    for line in seen:
        metrics.question(line)
    for first, end in windows(start, len(stream), recipe):
        group = stream[first:end]
        seeds = [seed_for(cfg.seed, index) for index in range(first, first + len(group))]
        share = 1 / len(group)  # a group's generation time is split evenly over its questions

        explored = generation.explore(group, seeds)
        solutions, plays = explored.solutions, explored.plays
        phase_seconds = explored.seconds | generation.timings()

        asleep = sleepy and any(learner.due_after([p for play in plays for p in play.pairs])
                                for learner in learners.values())
        if asleep:
            engine.backend.sleep()  # frees the engine's GPU memory for the DPO steps
        updated: set[str] = set()
        for k, (record, solution, play) in enumerate(zip(group, solutions, plays)):
            index = first + k
            t0 = time.perf_counter()
            updates = learn(learners, play.pairs, seed_for(cfg.seed, index), f"question {index} ({record.id})",
                            folder)
            updated |= set(updates)
            answers = curves.get(index, {})
            seconds = {"generate_seconds": phase_seconds["generate_seconds"] * share,
                       "curves_seconds": answers.get("seconds", 0.0),
                       **{key: value * share for key, value in phase_seconds.items() if key != "generate_seconds"},
                       "update_seconds": time.perf_counter() - t0}
            line = ProgressLine(
                index=index, id=record.id, correct_before=solution.correct, extracted=solution.extracted,
                pairs={a: sum(p.agent == a for p in play.pairs) for a in agents},
                pair_nodes=[p.node for p in play.pairs], updates=updates, tokens=solution.tokens + play.tokens,
                seconds=seconds, curves={key: answers[key] for key in CURVES.values() if key in answers},
                strategy=solution.log | play.log,
            ).to_json()
            with progress.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            seen.append(line)
            metrics.question(line)
            shown.update(1, **live_numbers(seen, agents))
        if asleep:
            engine.backend.wake_up()
        if updated:  # nothing generates between a group's updates: vLLM serves the new weights from the next group
            adapters_updated(engine, pool, sorted(updated))
        if end % cfg.checkpoint_every == 0 or end == len(stream):
            save_checkpoint(folder, model, learners, agents, end)
    shown.close()

    if cfg.dpo.update == "after_stream":
        train_after_stream(recipe, folder, model, learners, agents, len(stream), epochs_done)
    metrics.close()
    adapters = folder / "adapters"
    for name in agents:
        model.save_pretrained(adapters, selected_adapters=[name])
    summary = summarize(read_jsonl(progress))
    if cfg.dpo.update == "after_stream":
        summary["epochs"] = read_jsonl(folder / "epochs.jsonl")
    summary |= {"skipped_rows": loaded.skipped, "adapters": str(adapters)}
    run.mark_done(STAGE, summary)
    return summary


def windows(start: int, total: int, recipe: Recipe) -> Iterator[tuple[int, int]]:
    """(first, end) of each stretch of the stream generated with the same weights: a group of `question_batch`
    questions while an update may follow any question; under `after_stream` (no update during the stream)
    everything up to the next checkpoint, through which a strategy keeps up to `question_batch` questions in flight
    (the Flow lets the next question in as soon as one is finished)."""
    cfg = recipe.online
    step = cfg.checkpoint_every if cfg.dpo.update == "after_stream" else cfg.question_batch
    first = start
    while first < total:
        end = min(total, (first // step + 1) * step)  # on multiples of step: every checkpoint ends a window
        yield first, end
        first = end


def adapters_updated(engine: Engine, pool: WorkerPool | None, names: list[str]) -> None:
    """Send the new weights of these adapters to every generation worker, or tell the driver's backend."""
    if pool is not None:
        pool.adapters_updated(names)
    else:
        engine.backend.adapters_updated(names)


def measure_curves(recipe: Recipe, folder: Path, strategy, base_answers: Callable[[list, list[int]], list],
                   stream: list) -> dict[int, dict]:
    """The frozen and zero-shot answers of the whole stream, question index -> {curve key: correct, seconds}.

    Neither policy changes during the stream (the frozen one is the adapters-disabled model), so they are answered
    apart from training, `runtime.curves_batch` questions at a time, each with its question's seed: the same
    answers as inside the loop, and the loop's time goes to the trained policy, its pairs and its updates. Kept in
    curves.jsonl batch by batch, so a resumed stage answers only what is missing."""
    cfg = recipe.online
    if "frozen" not in cfg.curves and "zero_shot" not in cfg.curves:
        return {}

    def work(_: int, batch: list) -> list[dict]:
        t0 = time.perf_counter()
        records, seeds = [r for _, r in batch], [seed_for(cfg.seed, index) for index, _ in batch]
        answers: dict[str, list[bool]] = {}
        if "frozen" in cfg.curves:
            answers[CURVES["frozen"]] = [s.correct for s in strategy.solve(records, seeds, trained=False)]
        if "zero_shot" in cfg.curves:
            answers[CURVES["zero_shot"]] = [s.correct for s in base_answers(records, seeds)]
        share = (time.perf_counter() - t0) / len(batch)
        return [{"index": index, **{key: values[k] for key, values in answers.items()}, "seconds": share}
                for k, (index, _) in enumerate(batch)]

    lines = run_batches(folder / "curves.jsonl", list(enumerate(stream)), recipe.runtime.curves_batch, work)
    return {line["index"]: line for line in lines}


def train_after_stream(recipe: Recipe, folder: Path, model, learners: dict[str, DPOLearner], agents: list[str],
                       position: int, epochs_done: int) -> None:
    """`after_stream`: `epochs` passes over every pair of the stream, a checkpoint and a line of epochs.jsonl after
    each (a resumed run goes on from the last whole epoch)."""
    epochs = folder / "epochs.jsonl"
    kept = epochs.read_text().splitlines()[:epochs_done] if epochs.is_file() else []
    write_atomic(epochs, "".join(raw + "\n" for raw in kept))
    for epoch in range(epochs_done, recipe.online.dpo.epochs):
        t0 = time.perf_counter()
        with stopped_at(f"epoch {epoch} after the stream", folder):
            steps = {agent: learner.train_epoch(seed_for(recipe.online.seed, "epoch", epoch, agent))
                     for agent, learner in learners.items()}
        with epochs.open("a") as fh:
            fh.write(json.dumps({"epoch": epoch, "updates": steps, "seconds": time.perf_counter() - t0}) + "\n")
        save_checkpoint(folder, model, learners, agents, position, epoch + 1)


def learn(learners: dict[str, DPOLearner], pairs: list, seed: int, where: str, folder: Path) -> dict:
    """Queue the question's pairs with each agent's learner; step every learner whose batch is full."""
    updates: dict[str, list[dict]] = {}
    for agent, learner in learners.items():
        learner.add(pairs)
        while learner.ready():
            with stopped_at(where, folder):
                updates.setdefault(agent, []).append(learner.step(seed_for(seed, agent, learner.steps)))
    return updates


@contextlib.contextmanager
def stopped_at(where: str, folder: Path) -> Iterator[None]:
    """A non-finite DPO step says where it happened and that the last good checkpoint is kept."""
    try:
        yield
    except NonFiniteLoss as err:
        raise NonFiniteLoss(f"{err}; {where}; the last good checkpoint in {folder / 'checkpoint'} is kept "
                            "(resuming replays the same steps: change the recipe in a new run folder)") from err


def live_numbers(lines: list[dict], agents: list[str]) -> dict[str, str]:
    """What the progress display shows: running accuracy of each curve, pairs per agent, the last DPO loss and the
    generation speed."""
    numbers = {}
    for name, key in CURVES.items():
        marks = [line[key] for line in lines if key in line]
        if marks:
            numbers["0-shot" if name == "zero_shot" else name] = percent(sum(marks), len(marks))
    numbers["pairs"] = "/".join(str(sum(line["pairs"][a] for line in lines)) for a in agents)
    losses = [step["loss"] for line in lines for steps in line["updates"].values() for step in steps]
    if losses:
        numbers["loss"] = f"{losses[-1]:.3f}"
    seconds = sum(line["generate_seconds"] + line["rollout_seconds"] for line in lines)
    if seconds:
        numbers["tok/s"] = f"{sum(line['tokens'] for line in lines) / seconds:.0f}"
    return numbers


def summarize(lines: list[dict]) -> dict:
    n = len(lines)
    agents = list(lines[0]["pairs"]) if lines else []  # every line names every agent of the strategy

    def rate(key: str) -> float | None:
        vals = [line[key] for line in lines if key in line]
        return sum(vals) / len(vals) if vals else None

    return {
        "questions": n,
        "progressive_accuracy": rate("correct_before"),
        "frozen_accuracy": rate("frozen_correct"),
        "zero_shot_accuracy": rate("zero_shot_correct"),
        "pairs": {a: sum(line["pairs"][a] for line in lines) for a in agents},
        "tokens": sum(line["tokens"] for line in lines),
        "seconds": {k: sum(line[k] for line in lines) for k in lines[0] if k.endswith("_seconds")} if lines else {},
    }


def save_checkpoint(folder: Path, model, learners: dict[str, DPOLearner], agents: list[str], position: int,
                    epochs: int = 0) -> None:
    """Write ckpt-<position>[-epoch<n>]/ completely, then point `checkpoint/latest` at it atomically."""
    root = folder / "checkpoint"
    name = f"ckpt-{position:06d}" + (f"-epoch{epochs}" if epochs else "")
    target = root / name
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({agent: adapter_state(model, agent) for agent in agents}, tmp / "adapters.pt")
    torch.save({agent: learner.state_dict() for agent, learner in learners.items()}, tmp / "learners.pt")
    state = {"position": position} | ({"epochs": epochs} if epochs else {})  # epochs: after the stream only
    write_json(tmp / "state.json", state)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    write_json(root / "latest.json", {"checkpoint": target.name} | state)
    for old in [*root.glob("ckpt-*"), *root.glob(".tmp-*")]:  # superseded, or left by a killed save
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, model, learners: dict[str, DPOLearner]) -> tuple[int, int]:
    """Restore adapters and learners from the latest checkpoint; the stream position to go on from and the
    epochs after the stream already trained."""
    latest = folder / "checkpoint" / "latest.json"
    if not latest.is_file():
        return 0, 0
    meta = json.loads(latest.read_text())
    ckpt = folder / "checkpoint" / meta["checkpoint"]
    load_adapters_file(ckpt / "adapters.pt", model)
    states = torch.load(ckpt / "learners.pt")
    for agent, learner in learners.items():
        learner.load_state_dict(states[agent])
    return meta["position"], meta.get("epochs", 0)


def load_trained_adapters(folder: Path, model) -> None:
    """Put the finished online stage's adapters (its last checkpoint, bit-exact) on `model`."""
    if not (folder / "done.json").is_file():
        raise RunError(f"{folder} has no finished online stage: run `harness run online` first")
    meta = json.loads((folder / "checkpoint" / "latest.json").read_text())
    load_adapters_file(folder / "checkpoint" / meta["checkpoint"] / "adapters.pt", model)


def load_adapters_file(path: Path, model) -> None:
    for name, state in torch.load(path).items():
        load_adapter_state(model, name, state)

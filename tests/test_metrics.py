"""Metric sinks: progress lines and SFT logs read back from TensorBoard event files with exact tags and values."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from harness.errors import MetricsError
from harness.run.metrics import Metrics, open_metrics

UPDATE_1 = {"loss": 0.75, "margin": 0.0, "pairs": 2, "accuracy": 0.0}
UPDATE_2 = {"loss": 0.5, "margin": 0.25, "pairs": 2, "accuracy": 1.0}
STOP_1 = {"loss": 0.625, "margin": -0.125, "pairs": 1, "accuracy": 0.0}
SFT_LOG = [
    {"loss": 1.25, "grad_norm": 3.0, "learning_rate": 1e-4, "mean_token_accuracy": 0.5, "epoch": 0.5, "step": 1},
    {"loss": 0.75, "grad_norm": None, "learning_rate": 5e-5, "epoch": 1.0, "step": 2},
    # the trainer's closing entry: totals, no curve
    {"train_runtime": 1.0, "train_loss": 1.0, "total_flos": 0.0, "epoch": 1.0, "step": 2},
]


def progress_line(index: int, correct: bool, frozen: bool, zero_shot: bool, updates: dict, tokens: int = 100,
                  generate_seconds: float = 1.5, rollout_seconds: float = 0.5) -> dict:
    """A line of online/progress.jsonl as the online stage writes it."""
    return {"index": index, "id": f"q{index}", "correct_before": correct, "frozen_correct": frozen,
            "zero_shot_correct": zero_shot, "chunks": 2, "end": "stop", "extracted": "4", "nodes": 2,
            "pairs": {"answer": 2, "stop": 1}, "pair_nodes": [0, 1, 1], "updates": updates, "tokens": tokens,
            "stop_decisions": 3, "generate_seconds": generate_seconds, "curves_seconds": 0.25,
            "rollout_seconds": rollout_seconds, "answer_gen_seconds": 1.0, "stop_seconds": 0.5, "update_seconds": 0.1}


LINES = [
    progress_line(0, True, False, True, {"answer": [UPDATE_1]}),
    progress_line(1, False, False, True, {"answer": [UPDATE_2], "stop": [STOP_1]}, tokens=60,
                  generate_seconds=0.0, rollout_seconds=0.0),
    progress_line(2, True, True, False, {}),
    progress_line(3, True, False, False, {"answer": [UPDATE_1, UPDATE_2]}),
]


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every TensorBoard run under log_dir/tensorboard, as TensorBoard reads them."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for run in sorted((log_dir / "tensorboard").iterdir()):
        reader = accumulator.EventAccumulator(str(run), size_guidance={accumulator.SCALARS: 0})
        reader.Reload()
        scalars |= {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}
    return scalars


def approx(points: list[tuple[int, float]]) -> list:
    """Event values are float32: compare them approximately, steps exactly."""
    return [(step, pytest.approx(value, rel=1e-6)) for step, value in points]


def test_tensorboard_tags_and_values(tmp_path):
    pytest.importorskip("tensorboard")
    with Metrics(["tensorboard"], tmp_path, "run", {"name": "tiny"}) as metrics:
        for line in LINES[:2]:
            metrics.question(line)
        metrics.sft("flow", SFT_LOG)
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {
        "online/progressive_accuracy/trained", "online/progressive_accuracy/frozen",
        "online/progressive_accuracy/zero_shot", "online/pairs/answer", "online/pairs/stop", "online/tokens",
        "online/tokens_per_second",
        "dpo/answer/loss", "dpo/answer/margin", "dpo/answer/reward_accuracy", "dpo/answer/pairs",
        "dpo/stop/loss", "dpo/stop/margin", "dpo/stop/reward_accuracy", "dpo/stop/pairs",
        "sft/flow/loss", "sft/flow/learning_rate", "sft/flow/grad_norm", "sft/flow/mean_token_accuracy",
    }
    assert scalars["online/progressive_accuracy/trained"] == approx([(1, 1.0), (2, 0.5)])
    assert scalars["online/progressive_accuracy/frozen"] == approx([(1, 0.0), (2, 0.0)])
    assert scalars["online/progressive_accuracy/zero_shot"] == approx([(1, 1.0), (2, 1.0)])
    assert scalars["online/pairs/answer"] == approx([(1, 2.0), (2, 2.0)])
    assert scalars["online/tokens"] == approx([(1, 100.0), (2, 60.0)])
    # 100 tokens / (1.5 s + 0.5 s); the second line has no generation time, so no point
    assert scalars["online/tokens_per_second"] == approx([(1, 50.0)])
    assert scalars["dpo/answer/loss"] == approx([(1, 0.75), (2, 0.5)])
    assert scalars["dpo/answer/margin"] == approx([(1, 0.0), (2, 0.25)])
    assert scalars["dpo/answer/reward_accuracy"] == approx([(1, 0.0), (2, 1.0)])
    assert scalars["dpo/stop/loss"] == approx([(1, 0.625)])
    assert scalars["dpo/stop/margin"] == approx([(1, -0.125)])
    assert scalars["sft/flow/loss"] == approx([(1, 1.25), (2, 0.75)])
    assert scalars["sft/flow/learning_rate"] == approx([(1, 1e-4), (2, 5e-5)])
    assert scalars["sft/flow/grad_norm"] == approx([(1, 3.0)])
    assert scalars["sft/flow/mean_token_accuracy"] == approx([(1, 0.5)])


def test_dpo_steps_count_per_agent_across_questions(tmp_path):
    pytest.importorskip("tensorboard")
    with Metrics(["tensorboard"], tmp_path, "run", {}) as metrics:
        for line in LINES:
            metrics.question(line)
    scalars = read_scalars(tmp_path)
    # answer steps: 1 (q0), 2 (q1), 3 and 4 (q3); stop: 1 (q1)
    assert scalars["dpo/answer/loss"] == approx([(1, 0.75), (2, 0.5), (3, 0.75), (4, 0.5)])
    assert [step for step, _ in scalars["dpo/stop/loss"]] == [1]
    assert scalars["online/progressive_accuracy/trained"] == approx([(1, 1.0), (2, 0.5), (3, 2 / 3), (4, 0.75)])
    assert scalars["online/progressive_accuracy/frozen"] == approx([(1, 0.0), (2, 0.0), (3, 1 / 3), (4, 0.25)])


def test_resumed_stage_replaying_its_records_reads_as_one_run(tmp_path):
    pytest.importorskip("tensorboard")
    with Metrics(["tensorboard"], tmp_path, "run", {}) as before:  # the online stage killed after question 3
        for line in LINES[:3]:
            before.question(line)
        before.sft("flow", SFT_LOG[:1])
    with Metrics(["tensorboard"], tmp_path, "run", {}) as resumed:  # replays the kept records, then goes on
        for line in LINES:
            resumed.question(line)
        resumed.sft("flow", SFT_LOG)
    with Metrics(["tensorboard"], tmp_path / "never-killed", "run", {}) as straight:
        for line in LINES:
            straight.question(line)
        straight.sft("flow", SFT_LOG)
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["online", "sft"]
    assert len(list((tmp_path / "tensorboard" / "online").iterdir())) == 1  # the cut-short attempt's file is gone
    assert read_scalars(tmp_path) == read_scalars(tmp_path / "never-killed")


def test_compile_metrics_leave_the_online_curves(tmp_path):
    pytest.importorskip("tensorboard")
    with Metrics(["tensorboard"], tmp_path, "run", {}) as online:
        online.question(LINES[0])
    with Metrics(["tensorboard"], tmp_path, "run", {}) as compile_:  # a later stage opens its own
        compile_.sft("flow", SFT_LOG)
    scalars = read_scalars(tmp_path)
    assert scalars["online/tokens"] == approx([(1, 100.0)])
    assert scalars["sft/flow/loss"] == approx([(1, 1.25), (2, 0.75)])


def test_no_sink_writes_nothing(tmp_path):
    metrics = Metrics([], tmp_path / "logs", "run", {"name": "tiny"})
    for line in LINES:
        metrics.question(line)
    metrics.sft("flow", SFT_LOG)
    metrics.close()
    assert list(tmp_path.iterdir()) == []


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails even where it is installed
    with pytest.raises(MetricsError, match=r'pip install "harness\[wandb\]"'):
        Metrics(["wandb"], tmp_path / "logs", "run", {})


def test_a_missing_package_starts_no_sink(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MetricsError, match="wandb"):
        Metrics(["tensorboard", "wandb"], tmp_path / "logs", "run", {})
    assert not (tmp_path / "logs").exists()  # every package is checked before any sink starts


def test_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MetricsError, match=r'pip install "harness\[tensorboard\]"'):
        Metrics(["tensorboard"], tmp_path / "logs", "run", {})


def test_unknown_sink_is_an_error(tmp_path):
    with pytest.raises(MetricsError, match="unknown sink 'mlflow'"):
        Metrics(["mlflow"], tmp_path / "logs", "run", {})


class FakeRun:
    """Records what the W&B sink asks of a run."""

    def __init__(self) -> None:
        self.defined: list[tuple[str, str | None]] = []
        self.logged: list[dict] = []
        self.finished = False

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.defined.append((name, step_metric))

    def log(self, data: dict) -> None:
        self.logged.append(data)

    def finish(self) -> None:
        self.finished = True


def test_wandb_offline_run_with_an_axis_per_group(tmp_path, monkeypatch):
    run, inits = FakeRun(), []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: inits.append(kwargs) or run
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with Metrics(["wandb"], tmp_path, "run-1", {"name": "tiny"}) as metrics:
        metrics.question(LINES[0])
        metrics.sft("self", SFT_LOG[:1])
    assert inits == [{"mode": "offline", "dir": str(tmp_path), "project": "harness", "name": "run-1",
                      "config": {"name": "tiny"}}]
    assert run.defined == [("online/step", None), ("online/*", "online/step"),
                           ("dpo/answer/step", None), ("dpo/answer/*", "dpo/answer/step"),
                           ("sft/self/step", None), ("sft/self/*", "sft/self/step")]
    assert run.logged[0]["online/step"] == 1
    assert run.logged[0]["online/progressive_accuracy/trained"] == 1.0
    assert run.logged[1] == {"dpo/answer/loss": 0.75, "dpo/answer/margin": 0.0, "dpo/answer/reward_accuracy": 0.0,
                             "dpo/answer/pairs": 2.0, "dpo/answer/step": 1}
    assert run.logged[2]["sft/self/loss"] == 1.25 and run.logged[2]["sft/self/step"] == 1
    assert run.finished


def test_open_metrics_logs_under_the_run_folder(tmp_path, tiny_recipe, monkeypatch):
    pytest.importorskip("tensorboard")
    recipe = tiny_recipe("runtime.metrics=[tensorboard]")
    with open_metrics(recipe, tmp_path / "run-a") as metrics:
        metrics.question(LINES[0])
    assert "online/tokens" in read_scalars(tmp_path / "run-a" / "logs")
    monkeypatch.setenv("RANK", "1")  # a non-main rank of a distributed launch writes nothing
    with open_metrics(recipe, tmp_path / "run-b") as metrics:
        metrics.question(LINES[0])
    assert not (tmp_path / "run-b").exists()

"""Stage `online`: progress lines, checkpoints, resume after a kill, the run-folder lock, skipping a done stage.

Part one drives `run_online` in-process with a scripted backend (exact expected lines, pairs and token counts).
Part two runs `python -m harness.cli run online tiny ...` in subprocesses on the warm-started tiny model: one run
is killed with SIGKILL mid-stream and resumed, and must end exactly like a run never killed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DEVICES
from safetensors.torch import load_file

import harness.stages.online as online_mod
import harness.training.learner as learner_mod
from harness.cli import main as cli_main
from harness.errors import DataError, NonFiniteLoss, RunError
from harness.generation.engine import Engine
from harness.generation.prompts import Prompter
from harness.modeling.models import adapter_state
from harness.run.folder import RunDir, read_jsonl
from harness.stages.online import run_online

REPO = Path(__file__).resolve().parent.parent


def strip_seconds(lines: list[dict]) -> list[dict]:
    """Log lines without their timings (`*_seconds` fields, and a `seconds` field), which no two runs share."""
    return [{k: v for k, v in line.items() if k != "seconds" and not k.endswith("_seconds")} for line in lines]


def same_tensors(a, b) -> bool:
    """Bit-identical nested structures of tensors, numbers, strings, lists and dicts."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.cpu().numpy().tobytes() == b.cpu().numpy().tobytes())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


# ------------------------------------------------------------------ in-process, scripted backend

TRAIN = [
    {"question": "What is 3+4?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "What is 5+5?", "answer": "5 + 5 = 10\n#### 10"},
    {"question": "What is 1+1?", "answer": "1 + 1 = 2\n#### 2"},
]
CHUNKS = {
    # main chain 3+4 | No | =7 | Yes: correct; pairs at answer 0, stop 0 and stop 1 (see test_flow.py)
    "What is 3+4?": {"": ["3+4", "3+5"], "3+4": ["=7", "=7!"], "3+5": ["=8"], "3+4=7": ["0"]},
    # no answer at all: graded wrong, every rollout wrong too: no pairs
    "What is 5+5?": {"": ["I do not know<EOS>"]},
    # main 1+1=2 | Yes: correct; answer 0 -> 1+1=3 wrong (pair); stop 0 -> No, " ok", Yes: still correct
    "What is 1+1?": {"": ["1+1=2", "1+1=3"], "1+1=2": [" ok"]},
}
STOP = {
    "What is 3+4?": {"3+4": 0.2, "3+5": 0.2, "3+4=7": 0.9, "3+5=8": 0.9, "3+4=7!": 0.9},
    "What is 5+5?": {},
    "What is 1+1?": {"1+1=2": 0.9, "1+1=3": 0.9, "1+1=2 ok": 0.9},
}


@pytest.fixture
def scripted_setup(tmp_path, tiny_recipe, tiny_peft, scripted_backend):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in TRAIN))
    recipe = tiny_recipe(f"data.train.source={data}", "online.questions=3", "online.dpo.batch_pairs=1",
                         "online.checkpoint_every=2", "online.curves=[trained, frozen]",
                         "online.strategy.chunk_size=64", "online.strategy.max_chunks=3")

    def engine() -> Engine:
        """A fresh engine: new zero-adapter model (same seed) and a new scripted backend."""
        eng = Engine.__new__(Engine)
        eng.recipe = recipe
        eng.model, eng.tokenizer = tiny_peft()
        eng.prompter = Prompter(eng.tokenizer, recipe.strategy.answer_prompt, recipe.model.chat_template)
        eng.backend = scripted_backend(eng.tokenizer, eng.prompter, CHUNKS, STOP, recipe.strategy)
        return eng

    return recipe, engine


def test_scripted_online_run_progress_lines(tmp_path, scripted_setup):
    recipe, make_engine = scripted_setup
    engine = make_engine()
    run = RunDir(tmp_path / "run")
    summary = run_online(recipe, run, engine)
    lines = read_jsonl(tmp_path / "run" / "online" / "progress.jsonl")
    assert len(lines) == 3

    expected = [
        {"index": 0, "id": "train-0", "correct_before": True, "frozen_correct": True, "chunks": 2, "end": "stop",
         "extracted": "7", "nodes": 4, "pairs": {"answer": 1, "stop": 2},
         "pair_nodes": ["answer:0", "stop:0", "stop:1"], "tokens": 14, "stop_decisions": 5},
        {"index": 1, "id": "train-1", "correct_before": False, "frozen_correct": False, "chunks": 1, "end": "eos",
         "extracted": None, "nodes": 1, "pairs": {"answer": 0, "stop": 0}, "pair_nodes": [],
         "tokens": 14 + 4 * 14, "stop_decisions": 0},  # the resample equals the original: 4 tries drawn
        {"index": 2, "id": "train-2", "correct_before": True, "frozen_correct": True, "chunks": 1, "end": "stop",
         "extracted": "2", "nodes": 2, "pairs": {"answer": 1, "stop": 0}, "pair_nodes": ["answer:0"],
         "tokens": 13, "stop_decisions": 3},
    ]
    for line, want in zip(strip_seconds(lines), expected):
        updates = line.pop("updates")
        assert line == want
        assert {agent: len(steps) for agent, steps in updates.items()} == {
            agent: n for agent, n in want["pairs"].items() if n}  # batch_pairs=1: one step per pair
    for line in lines:
        for key in ("curves_seconds", "generate_seconds", "rollout_seconds", "answer_gen_seconds", "stop_seconds",
                    "update_seconds"):
            assert isinstance(line[key], float) and line[key] >= 0.0, key
    first_answer, first_stop = lines[0]["updates"]["answer"][0], lines[0]["updates"]["stop"][0]
    for first in (first_answer, first_stop):  # zero-initialised LoRA, reference = base: margin 0, loss log 2
        assert first["margin"] == 0.0 and first["pairs"] == 1
        assert math.isclose(first["loss"], math.log(2), rel_tol=1e-6)

    assert summary["questions"] == 3
    assert summary["progressive_accuracy"] == pytest.approx(2 / 3)  # the unanswered question counts as wrong
    assert summary["frozen_accuracy"] == pytest.approx(2 / 3)
    assert summary["zero_shot_accuracy"] is None
    assert summary["pairs"] == {"answer": 2, "stop": 2}
    assert summary["tokens"] == 14 + 70 + 13
    assert set(summary["seconds"]) == {k for k in lines[0] if k.endswith("_seconds")}
    assert json.loads((tmp_path / "run" / "online" / "done.json").read_text()) == json.loads(json.dumps(summary))

    # the frozen curve really ran with adapters disabled, the trained one with the agents' adapters
    backend = engine.backend
    assert {a for a, *_ in backend.generate_calls} == {"answer", None}
    assert {a for a, *_ in backend.stop_calls} == {"stop", None}
    # the backend is told which adapters changed, after each question that stepped them (vLLM reloads them)
    assert backend.updated == [["answer", "stop"], ["answer"]]

    # the final checkpoint and the saved adapters hold the trained weights
    ckpt = tmp_path / "run" / "online" / "checkpoint"
    assert json.loads((ckpt / "latest.json").read_text()) == {"checkpoint": "ckpt-000003", "position": 3}
    assert sorted(p.name for p in ckpt.glob("ckpt-*")) == ["ckpt-000003"]
    saved = torch.load(ckpt / "ckpt-000003" / "adapters.pt")
    for name in ("answer", "stop"):
        live = adapter_state(engine.model, name)
        assert same_tensors(saved[name], live)
        assert any(v.abs().sum() > 0 for k, v in live.items() if "lora_B" in k), f"{name} did not learn"
        on_disk = load_file(tmp_path / "run" / "online" / "adapters" / name / "adapter_model.safetensors")
        assert sorted(on_disk) == sorted(live)
        assert all(same_tensors(on_disk[k], live[k]) for k in live)


class Crash(Exception):
    """Stands in for a kill between writing a progress line and writing the checkpoint after it."""


def crash_before_checkpoint(monkeypatch, at: int) -> None:
    real = online_mod.save_checkpoint

    def save(folder, model, learners, agents, position, epochs=0):
        if position == at:
            raise Crash(position)
        real(folder, model, learners, agents, position, epochs)

    monkeypatch.setattr(online_mod, "save_checkpoint", save)


def resume_matches_reference(tmp_path, scripted_setup, monkeypatch, tear_last_line: bool) -> None:
    recipe, make_engine = scripted_setup
    ref_engine = make_engine()
    run_online(recipe, RunDir(tmp_path / "ref"), ref_engine)
    reference = read_jsonl(tmp_path / "ref" / "online" / "progress.jsonl")

    with monkeypatch.context() as patch:
        crash_before_checkpoint(patch, at=3)
        with pytest.raises(Crash):
            run_online(recipe, RunDir(tmp_path / "run"), make_engine())
    progress = tmp_path / "run" / "online" / "progress.jsonl"
    written = progress.read_text().splitlines(keepends=True)
    assert len(written) == 3  # line 2 was written, its checkpoint (position 3) was not: it must be recomputed
    if tear_last_line:
        progress.write_text("".join(written[:2]) + written[2][: len(written[2]) // 2])

    engine = make_engine()
    run_online(recipe, RunDir(tmp_path / "run"), engine)
    assert strip_seconds(read_jsonl(progress)) == strip_seconds(reference)
    # restored adapters are announced to the backend before the first question, then question 2's update
    assert engine.backend.updated == [["answer", "stop"], ["answer"]]
    for name in ("answer", "stop"):
        assert same_tensors(adapter_state(engine.model, name), adapter_state(ref_engine.model, name))
    learners = [torch.load(root / "online" / "checkpoint" / "ckpt-000003" / "learners.pt")
                for root in (tmp_path / "run", tmp_path / "ref")]
    assert same_tensors(*learners)


def test_resume_recomputes_lines_after_the_checkpoint(tmp_path, scripted_setup, monkeypatch):
    resume_matches_reference(tmp_path, scripted_setup, monkeypatch, tear_last_line=False)


def test_resume_after_a_torn_last_progress_line(tmp_path, scripted_setup, monkeypatch):
    """A kill (or a full disk) in the middle of writing a progress line leaves half a line: resume must drop it,
    as harness/run/batches.py does, instead of failing to parse progress.jsonl."""
    resume_matches_reference(tmp_path, scripted_setup, monkeypatch, tear_last_line=True)


def test_a_nan_epoch_after_the_stream_says_which_and_writes_no_epoch_line(tmp_path, tiny_recipe):
    class Diverges:
        def train_epoch(self, seed: int) -> list[dict]:
            raise NonFiniteLoss("adapter answer: DPO loss is nan at step 3")

    recipe = tiny_recipe("online.dpo.update=after_stream", "online.dpo.epochs=2")
    with pytest.raises(NonFiniteLoss, match=r"step 3; epoch 0 after the stream; the last good checkpoint in .*"):
        online_mod.train_after_stream(recipe, tmp_path, None, {"answer": Diverges()}, ["answer"], 24, 0)
    assert (tmp_path / "epochs.jsonl").read_text() == ""


def test_nan_loss_stops_the_stage_and_keeps_the_checkpoint(tmp_path, scripted_setup, monkeypatch):
    recipe, make_engine = scripted_setup
    real, calls = learner_mod.dpo_loss, []

    def nan_from_fourth_step(*args, **kwargs):  # steps 1-3 are question 0's, step 4 is question 2's
        calls.append(1)
        loss, margin = real(*args, **kwargs)
        return (loss * float("nan") if len(calls) >= 4 else loss), margin

    monkeypatch.setattr(learner_mod, "dpo_loss", nan_from_fourth_step)
    engine = make_engine()
    with pytest.raises(NonFiniteLoss, match=r"question 2 \(train-2\).*checkpoint"):
        run_online(recipe, RunDir(tmp_path / "run"), engine)
    folder = tmp_path / "run" / "online"
    assert not (folder / "done.json").exists()
    assert json.loads((folder / "checkpoint" / "latest.json").read_text())["position"] == 2
    assert [line["index"] for line in read_jsonl(folder / "progress.jsonl")] == [0, 1]
    kept = torch.load(folder / "checkpoint" / "ckpt-000002" / "adapters.pt")
    assert same_tensors(kept["answer"], adapter_state(engine.model, "answer"))  # the failed step did not apply


def test_run_folder_lock_refuses_a_second_holder(tmp_path):
    holder = RunDir(tmp_path)
    holder.lock()
    with pytest.raises(RunError, match="in use"):
        RunDir(tmp_path).lock()


def test_refused_lock_leaves_the_holders_pid_in_the_lock_file(tmp_path):
    holder = RunDir(tmp_path)
    holder.lock()
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
    with pytest.raises(RunError):
        RunDir(tmp_path).lock()
    assert (tmp_path / ".lock").read_text() == str(os.getpid()), "the refused process emptied the holder's .lock"


@pytest.mark.parametrize("overrides_last", [False, True], ids=["overrides-first", "overrides-after-run-dir"])
def test_cli_run_takes_overrides_before_or_after_run_dir(tmp_path, monkeypatch, overrides_last):
    """`harness run online tiny --run-dir D key=value` is the documented form."""
    import harness.stages.pipeline

    seen = {}

    def fake_stage(stage, recipe, run, engine=None):
        seen.update(stage=stage, questions=recipe.online.questions, lr=recipe.online.dpo.lr, path=run.path)
        return {}

    monkeypatch.setattr(harness.stages.pipeline, "run_stage", fake_stage)
    overrides = ["online.questions=5", "online.dpo.lr=0.01"]
    where = ["--run-dir", str(tmp_path / "run")]
    argv = ["run", "online", "tiny", *(where + overrides if overrides_last else overrides + where)]
    assert cli_main(argv) == 0
    assert seen == {"stage": "online", "questions": 5, "lr": 0.01, "path": tmp_path / "run"}


# ------------------------------------------------------------------ subprocesses on the warm tiny model

# Run as `harness run online tiny --run-dir D key=value ...`, the documented form. The settings are pinned here
# so that edits of recipes/tiny.yaml do not change what these tests see. Which questions step the optimizer depends
# on the machine's float rounding, so the kill-and-resume fixture reads them off the uninterrupted run and kills at a
# checkpoint with steps on both sides of it; 8 questions with batch_pairs 1 give it four checkpoints to choose from.
# The Stop threshold of 0.7 keeps the warm tiny model's Stop from saying yes after every first chunk.
MODEL_ARGS = ["model.tiny.warmup_steps=300"]
QUESTIONS, EVERY = 8, 2
ARGS = [*MODEL_ARGS, "online.strategy.chunk_size=12", "online.strategy.max_chunks=3", "online.strategy.temperature=1.0",
        "online.dpo.lr=0.001", f"online.questions={QUESTIONS}", f"data.train.limit={QUESTIONS}",
        f"online.checkpoint_every={EVERY}", "online.dpo.batch_pairs=1", "online.seed=2",
        "online.strategy.stop_threshold=0.7"]


def split_checkpoint(lines: list[dict]) -> int:
    """The first checkpoint position with optimizer steps before it and after it in this run's progress lines."""
    stepped = [i for i, line in enumerate(lines) if line["updates"]]
    for position in range(EVERY, len(lines), EVERY):
        if any(i < position for i in stepped) and any(i >= position for i in stepped):
            return position
    raise AssertionError(f"no checkpoint has optimizer steps on both sides (steps at questions {stepped}): a resume "
                         "there would test no restored optimizer state; the settings must give more steps")


def harness_cmd(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run", "online", "tiny", "--run-dir", str(run_dir), *ARGS, *overrides]


def start(run_dir: Path, env: dict, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(harness_cmd(run_dir, *overrides), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


@pytest.fixture(scope="module", params=DEVICES)
def online_runs(warm_tiny, tmp_path_factory, request):
    """An uninterrupted run, then a run killed with SIGKILL once it has written the first checkpoint with optimizer
    steps on both sides (read off the uninterrupted run) and then resumed, on the device of the fixture's parameter."""
    root = tmp_path_factory.mktemp("online")
    env = dict(os.environ)
    device = f"runtime.device={request.param}"
    started: list[subprocess.Popen] = []
    try:
        reference = start(root / "reference", env, device)
        started.append(reference)
        reference_out, _ = finish(reference)
        target = split_checkpoint(read_jsonl(root / "reference" / "online" / "progress.jsonl"))
        victim_dir = root / "killed"
        victim = start(victim_dir, env, device)
        started.append(victim)
        latest = victim_dir / "online" / "checkpoint" / "latest.json"
        progress = victim_dir / "online" / "progress.jsonl"

        def position() -> int:
            try:
                return json.loads(latest.read_text())["position"]
            except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced
                return -1

        deadline = time.monotonic() + 240
        while position() < target:
            assert victim.poll() is None, f"the run ended before it was killed: {victim.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint at {target} within 240 s"
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate()
        assert victim.returncode == -signal.SIGKILL
        killed_at = {
            "position": position(),
            "target": target,
            "lines": progress.read_text().count("\n") if progress.is_file() else 0,
            "done": (victim_dir / "online" / "done.json").exists(),
        }
        print(f"killed at {killed_at}")
        resumed = start(victim_dir, env, device)
        started.append(resumed)
        resumed_out, _ = finish(resumed)
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return {"reference": root / "reference", "killed": victim_dir, "killed_at": killed_at,
            "reference_out": reference_out, "resumed_out": resumed_out}


def test_killed_and_resumed_run_equals_uninterrupted_run(online_runs):
    ref, killed, at = online_runs["reference"], online_runs["killed"], online_runs["killed_at"]
    assert not at["done"] and at["position"] < QUESTIONS and at["lines"] >= at["position"], at
    ref_lines = read_jsonl(ref / "online" / "progress.jsonl")
    assert len(ref_lines) == QUESTIONS
    # killed as the target checkpoint was written (or, on a slow poll, at a later one: it must split the steps too)
    stepped = [i for i, line in enumerate(ref_lines) if line["updates"]]
    assert any(i < at["position"] for i in stepped) and any(i >= at["position"] for i in stepped), (at, stepped)

    assert strip_seconds(read_jsonl(killed / "online" / "progress.jsonl")) == strip_seconds(ref_lines)
    for name in ("answer", "stop"):
        a = load_file(ref / "online" / "adapters" / name / "adapter_model.safetensors")
        b = load_file(killed / "online" / "adapters" / name / "adapter_model.safetensors")
        assert same_tensors(a, b), name
    assert any(v.abs().sum() > 0 for name in ("answer", "stop")
               for k, v in load_file(ref / "online" / "adapters" / name / "adapter_model.safetensors").items()
               if "lora_B" in k), "no adapter stepped"
    for part in ("adapters.pt", "learners.pt"):
        a = torch.load(ref / "online" / "checkpoint" / f"ckpt-{QUESTIONS:06d}" / part)
        b = torch.load(killed / "online" / "checkpoint" / f"ckpt-{QUESTIONS:06d}" / part)
        assert same_tensors(a, b), part
    ref_done = json.loads((ref / "online" / "done.json").read_text())
    killed_done = json.loads((killed / "online" / "done.json").read_text())
    for done in (ref_done, killed_done):
        done.pop("seconds"), done.pop("adapters")
    assert ref_done == killed_done


def test_progress_lines_have_the_documented_fields(online_runs):
    lines = read_jsonl(online_runs["reference"] / "online" / "progress.jsonl")
    for i, line in enumerate(lines):
        assert line["index"] == i and line["id"] == f"arith-{i}"
        for key in ("correct_before", "frozen_correct", "zero_shot_correct"):
            assert isinstance(line[key], bool), key
        assert set(line["pairs"]) == {"answer", "stop"}
        assert sum(line["pairs"].values()) == len(line["pair_nodes"])
        assert all(node.split(":")[0] in line["pairs"] for node in line["pair_nodes"])
        assert isinstance(line["tokens"], int) and line["tokens"] >= line["chunks"] > 0
        assert 1 <= line["chunks"] <= 3 and line["end"] in ("stop", "eos", "max_chunks")
        seconds = {k for k in line if k.endswith("_seconds")}
        assert {"generate_seconds", "rollout_seconds", "update_seconds", "curves_seconds"} <= seconds
        assert all(isinstance(line[k], float) and line[k] >= 0 for k in seconds)
        # batch_pairs=1: every pair is one optimizer step of its agent, in the question that made it
        assert {a: len(s) for a, s in line["updates"].items()} == {a: n for a, n in line["pairs"].items() if n}
        for steps in line["updates"].values():
            assert all(set(s) == {"loss", "margin", "pairs", "accuracy"} for s in steps)
            assert all(s["pairs"] == 1 for s in steps)
            assert math.isfinite(sum(s["loss"] for s in steps))
    # before the first optimizer step the trained Flow is the frozen Flow (zero LoRA): same answers
    first = next(i for i, line in enumerate(lines) if line["updates"])
    assert all(line["correct_before"] == line["frozen_correct"] for line in lines[: first + 1])
    summary = json.loads(online_runs["reference_out"])
    assert summary["progressive_accuracy"] == pytest.approx(sum(x["correct_before"] for x in lines) / len(lines))
    assert summary["pairs"] == {a: sum(x["pairs"][a] for x in lines) for a in ("answer", "stop")}


def test_rerunning_a_finished_stage_is_skipped_and_changes_nothing(online_runs, monkeypatch, capsys):
    folder = online_runs["reference"]

    def snapshot():
        return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != ".lock"}

    before = snapshot()

    def no_model(*args, **kwargs):
        raise AssertionError("a finished stage must not build the model")

    monkeypatch.setattr(Engine, "__init__", no_model)
    monkeypatch.setattr("harness.modeling.models.load_base", no_model)
    started = time.perf_counter()
    assert cli_main(["run", "online", "tiny", "--run-dir", str(folder), *ARGS]) == 0
    assert time.perf_counter() - started < 10
    assert json.loads(capsys.readouterr().out) == json.loads((folder / "online" / "done.json").read_text())
    assert snapshot() == before


def test_second_process_on_a_locked_run_folder_refuses(tmp_path, env_for_subprocess):
    holder = RunDir(tmp_path / "run")
    holder.lock()
    proc = subprocess.run(harness_cmd(tmp_path / "run"), cwd=REPO, env=env_for_subprocess, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "in use" in proc.stderr and str(tmp_path / "run") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing written


def test_question_groups_keep_per_question_bookkeeping(tmp_path, scripted_setup):
    """question_batch=2 generates two questions at once; with a backend whose outputs do not depend on the weights,
    every line (pairs, tokens, stop decisions, updates) equals the one-question-at-a-time run, and a group's
    generation time is split evenly over its questions."""
    recipe, make_engine = scripted_setup
    run_online(recipe, RunDir(tmp_path / "one"), make_engine())
    grouped = recipe.model_copy(deep=True)
    grouped.online.question_batch = 2
    run_online(grouped, RunDir(tmp_path / "two"), make_engine())
    one = read_jsonl(tmp_path / "one" / "online" / "progress.jsonl")
    two = read_jsonl(tmp_path / "two" / "online" / "progress.jsonl")
    drop = ("updates",)
    assert [{k: v for k, v in line.items() if k not in drop} for line in strip_seconds(two)] == \
        [{k: v for k, v in line.items() if k not in drop} for line in strip_seconds(one)]
    assert [sorted(line["updates"]) for line in two] == [sorted(line["updates"]) for line in one]
    assert two[0]["generate_seconds"] == two[1]["generate_seconds"]
    assert two[0]["rollout_seconds"] == two[1]["rollout_seconds"]


def test_checkpoints_must_fall_on_group_ends(tiny_recipe):
    from harness.errors import RecipeError

    with pytest.raises(RecipeError, match="multiple of online.question_batch"):
        tiny_recipe("online.question_batch=3", "online.checkpoint_every=4")


def test_windows_are_groups_or_checkpoint_stretches_after_the_stream(tiny_recipe):
    from harness.stages.online import windows

    grouped = tiny_recipe("online.questions=10", "online.question_batch=2", "online.checkpoint_every=4")
    assert list(windows(0, 10, grouped)) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    after = tiny_recipe("online.questions=10", "online.question_batch=2", "online.checkpoint_every=4",
                        "online.dpo.update=after_stream")
    assert list(windows(0, 10, after)) == [(0, 4), (4, 8), (8, 10)]
    assert list(windows(4, 10, after)) == [(4, 8), (8, 10)]  # a resumed stage goes on from its checkpoint


def test_after_the_stream_questions_flow_through_a_window(tmp_path, scripted_setup, monkeypatch):
    """With no update during the stream, the Flow explores each checkpoint's questions as one window with
    `question_batch` in flight: the same lines as one question at a time."""
    from harness.strategies.flow_dpo import strategy as flow_dpo

    recipe, make_engine = scripted_setup
    recipe = recipe.model_copy(deep=True)
    recipe.online.dpo.update = "after_stream"
    run_online(recipe, RunDir(tmp_path / "one"), make_engine())
    calls = []
    explore = flow_dpo.explore_continuous
    monkeypatch.setattr(flow_dpo, "explore_continuous",
                        lambda flow, mains, *args: calls.append((len(mains), args[-1])) or explore(flow, mains, *args))
    flowing = recipe.model_copy(deep=True)
    flowing.online.question_batch = 2
    flowing.online.checkpoint_every = 4
    engine = make_engine()
    engine.recipe = flowing
    run_online(flowing, RunDir(tmp_path / "window"), engine)
    questions = flowing.online.questions
    assert calls == [(min(4, questions - first), 2) for first in range(0, questions, 4)]
    one = read_jsonl(tmp_path / "one" / "online" / "progress.jsonl")
    window = read_jsonl(tmp_path / "window" / "online" / "progress.jsonl")
    assert strip_seconds(window) == strip_seconds(one)


class Untouchable:
    """A backend that fails on any use: the driver of a run that generates on workers must not generate."""

    def __getattr__(self, name):
        raise AssertionError(f"the driver's backend was used ({name}) while workers generate")


class InProcessPool:
    """Stands in for `WorkerPool`: the strategy on an engine of its own, as a worker holds one."""

    def __init__(self, engine) -> None:
        from harness.strategies import build_strategy
        from harness.strategies.one_pass import zero_shot

        self.strategy = build_strategy(engine.recipe.online.strategy, engine)
        self.engine, self.zero_shot_of = engine, zero_shot
        self.updated: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self.strategy, name)  # solve, play, explore, timings

    def zero_shot(self, records, seeds):
        return self.zero_shot_of(self.engine, self.engine.recipe.strategy, records, seeds)

    def adapters_updated(self, names):
        self.updated.append(names)
        self.engine.backend.adapters_updated(names)


def test_with_workers_the_driver_only_trains(tmp_path, scripted_setup):
    """The online loop generates, the zero-shot curve included, only through the pool, and sends it every update:
    the same lines as generating in-process."""
    from harness.stages.online import train_online

    recipe, make_engine = scripted_setup
    recipe = recipe.model_copy(deep=True)
    recipe.online.curves = ["trained", "frozen", "zero_shot"]
    reference, driver, worker = make_engine(), make_engine(), make_engine()
    for engine in (reference, driver, worker):
        engine.recipe = recipe
    run_online(recipe, RunDir(tmp_path / "in-process"), reference)
    driver.backend = Untouchable()
    pool = InProcessPool(worker)  # its scripted backend answers whatever the weights
    train_online(recipe, RunDir(tmp_path / "pool"), driver, pool)
    lines = read_jsonl(tmp_path / "pool" / "online" / "progress.jsonl")
    assert strip_seconds(lines) == strip_seconds(read_jsonl(tmp_path / "in-process" / "online" / "progress.jsonl"))
    assert pool.updated == [sorted(line["updates"]) for line in lines if line["updates"]]


@pytest.mark.parametrize("name", ["../../../evil", "/tmp/evil", "ckpt-000002/../../elsewhere", "notes"])
def test_a_latest_json_that_leads_out_of_the_checkpoints_is_refused(tmp_path, name):
    from harness.training.checkpoints import checkpoint_dir

    good = tmp_path / "checkpoint" / "ckpt-000002"
    good.mkdir(parents=True)
    assert checkpoint_dir(tmp_path, {"checkpoint": "ckpt-000002"}) == good.resolve()
    with pytest.raises(RunError, match="not a checkpoint folder"):
        checkpoint_dir(tmp_path, {"checkpoint": name})


def test_trust_remote_code_is_named_at_every_start(tmp_path, monkeypatch, capsys):
    import harness.stages.pipeline

    monkeypatch.setattr(harness.stages.pipeline, "run_stage", lambda *args, **kwargs: {})
    trusting = ["run", "online", "tiny", "--run-dir", str(tmp_path / "run"), "model.trust_remote_code=true"]
    for _ in range(2):
        assert cli_main(trusting) == 0
        assert "warning: model.trust_remote_code is true: loading tiny runs the Python code" in capsys.readouterr().err
    assert cli_main(["run", "online", "tiny", "--run-dir", str(tmp_path / "other")]) == 0
    assert "warning:" not in capsys.readouterr().err


def test_a_resume_on_edited_training_data_is_refused_naming_the_source(tmp_path, scripted_setup, monkeypatch):
    """Killed after its checkpoint at question 2, the data file edited, started again: refused, nothing written."""
    recipe, make_engine = scripted_setup
    real = online_mod.save_checkpoint

    def save_then_die(folder, model, learners, agents, position, epochs=0):
        real(folder, model, learners, agents, position, epochs)
        raise KeyboardInterrupt  # stands for the kill: the checkpoint at 2 is the last one written

    monkeypatch.setattr(online_mod, "save_checkpoint", save_then_die)
    run = RunDir(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run_online(recipe, run, make_engine())
    monkeypatch.setattr(online_mod, "save_checkpoint", real)
    before = (tmp_path / "run" / "online" / "progress.jsonl").read_text()
    data = Path(recipe.data.train.source)
    data.write_text(data.read_text().replace("What is 5+5?", "What is 6+6?"))
    with pytest.raises(RunError, match=f"the train data '{data}' changed since"):
        run_online(recipe, run, make_engine())
    assert (tmp_path / "run" / "online" / "progress.jsonl").read_text() == before
    data.write_text(data.read_text().replace("What is 6+6?", "What is 5+5?"))  # restored: the run goes on
    assert run_online(recipe, run, make_engine())["questions"] == 3


def test_a_question_longer_than_the_context_is_refused_naming_its_row(tmp_path, scripted_setup):
    recipe, make_engine = scripted_setup
    data = Path(recipe.data.train.source)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[1]["question"] = "What is 5+5? " * 2000  # 26,000 characters: past the tiny model's 4,096 positions
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"row train-1: its prompt is \d+ tokens, more than the \d+ the model's "
                                        r"context \(4096\) leaves"):
        run_online(recipe, RunDir(tmp_path / "run"), make_engine())
    assert not (tmp_path / "run" / "online" / "progress.jsonl").exists()


def test_a_checkpoint_missing_its_learners_says_how_to_go_on(tmp_path, scripted_setup, monkeypatch):
    recipe, make_engine = scripted_setup
    with monkeypatch.context() as patch:
        crash_before_checkpoint(patch, at=3)
        with pytest.raises(Crash):
            run_online(recipe, RunDir(tmp_path / "run"), make_engine())
    (tmp_path / "run" / "online" / "checkpoint" / "ckpt-000002" / "learners.pt").unlink()
    with pytest.raises(RunError, match=r"ckpt-000002 lacks learners.pt, so the stage cannot go on from question 2: "
                                       r"restore the file\(s\), or remove .*online to run the stage again"):
        run_online(recipe, RunDir(tmp_path / "run"), make_engine())


def test_saving_adapters_asks_no_hub(tmp_path, tiny_peft, perturb, monkeypatch):
    """peft's default save looks up a hub id's config.json at every save; a stub that fails on any call shows none
    is made, with a base model that names a hub id."""
    import huggingface_hub
    import peft.utils.save_and_load as peft_save

    def no_hub(*args, **kwargs):
        raise AssertionError(f"a hub request: {args} {kwargs}")

    for module, name in [(peft_save, "check_file_exists_on_hf_hub"), (huggingface_hub, "file_exists"),
                         (huggingface_hub, "hf_hub_download")]:
        monkeypatch.setattr(module, name, no_hub)
    model, _ = tiny_peft()
    for config in model.peft_config.values():
        config.base_model_name_or_path = "meta-llama/Meta-Llama-3-8B-Instruct"
    perturb(model, "answer")
    state = adapter_state(model, "answer")
    model.save_pretrained(tmp_path / "saved", selected_adapters=["answer"], save_embedding_layers=False)
    saved = load_file(tmp_path / "saved" / "answer" / "adapter_model.safetensors")
    assert sorted(saved) == sorted(state) and all(same_tensors(saved[k], state[k]) for k in state)

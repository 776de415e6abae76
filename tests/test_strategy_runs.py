"""The one-agent strategy recipes (MCTS-DPO, SCDPO, naive DPO) on the warm tiny model, in subprocesses.

For each recipe: `harness reproduce` runs every stage and its run folder holds the strategy's own progress fields,
`policy` pairs and adapter, and eval records; a `harness run online` killed with SIGKILL after its first checkpoint
and resumed ends exactly like the reproduce run's online stage (same recipe and overrides, never killed). For SCDPO
trained after the stream (`online.dpo.update=after_stream`, 2 epochs), a run killed between its epochs resumes to
the same epochs and adapters as one never killed.

The kills are deterministic: the victim runs `harness.cli.main` with `save_checkpoint` patched to SIGKILL its own
process when a chosen checkpoint is about to be written (the one before it is then the latest, and the lines after
that one are on disk, to be dropped and recomputed). Which questions step the optimizer depends on the machine's
float rounding, so each victim starts once its reference has finished the online stage, and is killed after the
first checkpoint that the reference shows with steps on both sides (and pairs queued, where steps take several).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_online import same_tensors, strip_seconds

from harness.run.folder import read_jsonl

REPO = Path(__file__).resolve().parent.parent
RECIPES = ["mcts-dpo-tiny", "scdpo-tiny", "naive-dpo-tiny"]
STRATEGY = {"mcts-dpo-tiny": "mcts_dpo", "scdpo-tiny": "step_controlled", "naive-dpo-tiny": "naive_dpo"}
QUESTIONS = 12
EVERY = 2  # checkpoint_every and question_batch: five checkpoints inside the stream to choose the kill from
# The recipes' compile and eval sizes are kept, so that their SFT sets are the ones the recipes were sized for.
SMALL = [f"online.questions={QUESTIONS}", f"data.train.limit={QUESTIONS}", f"online.question_batch={EVERY}",
         f"online.checkpoint_every={EVERY}"]
# Steps on many questions, so that some checkpoint has steps on both sides (asserted, so that a change of the recipes
# or of a strategy cannot make the resume test vacuous): naive DPO and SCDPO step on every pair, naive DPO from 8
# samples a question (with 4, whole groups may give no pair); MCTS-DPO, which makes pairs on every question, steps on
# every 3, so that pairs wait in the learner's queue across the checkpoint.
EXTRA = {"mcts-dpo-tiny": ["online.dpo.batch_pairs=3"], "scdpo-tiny": ["online.dpo.batch_pairs=1"],
         "naive-dpo-tiny": ["online.strategy.samples=8", "online.dpo.batch_pairs=1"]}
# SCDPO trained after the stream in steps of 2 pairs: more than one step an epoch once the stream makes 3 pairs.
EPOCH_BATCH = 2
EPOCHS = ["online.dpo.update=after_stream", "online.dpo.epochs=2", f"online.dpo.batch_pairs={EPOCH_BATCH}"]
EVAL_MODELS = {"base", "online-policy", "sft-flow", "sft-self", "sft-ground_truth"}

# `python -c KILL_AT position epochs harness-args...`: the harness CLI, killed with SIGKILL when the checkpoint at
# (position, epochs after the stream) is about to be written.
KILL_AT = """
import os, signal, sys
import harness.stages.online as online
from harness.cli import main

at = (int(sys.argv[1]), int(sys.argv[2]))
real = online.save_checkpoint

def save(folder, model, learners, agents, position, epochs=0):
    if (position, epochs) == at:
        os.kill(os.getpid(), signal.SIGKILL)
    real(folder, model, learners, agents, position, epochs)

online.save_checkpoint = save
sys.exit(main(sys.argv[3:]))
"""


def args(recipe: str) -> list[str]:
    return [*SMALL, *EXTRA[recipe]]


def launch(cli_args: list[str], log: Path, kill_at: tuple[int, int] | None = None) -> subprocess.Popen:
    """A harness CLI subprocess, its output in `log` (a pipe nobody reads while it runs could fill up and block it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    head = ["-c", KILL_AT, *map(str, kill_at)] if kill_at else ["-m", "harness.cli"]
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, *head, *cli_args], cwd=REPO, env=dict(os.environ), stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def wait_ok(proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, f"{proc.args[1:4]} failed:\n{log.read_text()[-3000:]}"


def killed_state(folder: Path) -> dict:
    """What a killed run left: its latest checkpoint, whole progress and epoch lines, whether it was done."""
    online = folder / "online"
    return {"latest": json.loads((online / "checkpoint" / "latest.json").read_text()),
            "lines": len(read_jsonl(online / "progress.jsonl")), "epochs": len(read_jsonl(online / "epochs.jsonl")),
            "done": (online / "done.json").exists()}


def split_checkpoint(lines: list[dict], batch_pairs: int) -> int:
    """The first checkpoint with optimizer steps before and after it and, where a step takes several pairs, pairs
    waiting in the learner's queue there: a resume at it restores an optimizer's state and a queue, and uses both."""
    stepped = [line["index"] for line in lines if line["updates"]]
    for position in range(EVERY, len(lines), EVERY):
        early = lines[:position]
        queued = (sum(line["pairs"]["policy"] for line in early)
                  - sum(step["pairs"] for line in early for step in line["updates"].get("policy", [])))
        if min(stepped, default=position) < position <= max(stepped, default=-1) and (batch_pairs == 1 or queued):
            return position
    raise AssertionError(f"no checkpoint has optimizer steps on both sides (steps at questions {stepped}, "
                         f"{batch_pairs} pairs a step): the settings must give more steps")


def batch_pairs(run: Path) -> int:
    return yaml.safe_load((run / "recipe.yaml").read_text())["online"]["dpo"]["batch_pairs"]


@pytest.fixture(scope="module")
def runs(warm_tiny, tmp_path_factory) -> dict:
    """Per recipe: `reference`, a finished `harness reproduce`; `killed`, a `harness run online` killed as it was
    about to write the checkpoint after the reference's first split checkpoint, and resumed (`killed_at`: what the
    kill left). Under `epochs`: the same for scdpo-tiny trained after the stream, the victim killed before its
    epoch-2 checkpoint. References start at once; each victim starts when its kill point is known."""
    root = tmp_path_factory.mktemp("strategy-runs")
    jobs = {}  # key -> (reference cli args, victim cli args, kill point or None: read off the reference)
    for recipe in RECIPES:
        jobs[recipe] = (["reproduce", recipe, "--run-dir", str(root / recipe / "reference"), *args(recipe)],
                        ["run", "online", recipe, "--run-dir", str(root / recipe / "killed"), *args(recipe)], None)
    epoch_args = [*SMALL, *EPOCHS]
    jobs["epochs"] = (["run", "online", "scdpo-tiny", "--run-dir", str(root / "epochs" / "reference"), *epoch_args],
                      ["run", "online", "scdpo-tiny", "--run-dir", str(root / "epochs" / "killed"), *epoch_args],
                      (QUESTIONS, 2))
    out = {key: {"reference": root / key / "reference", "killed": root / key / "killed"} for key in jobs}
    procs: list[subprocess.Popen] = []
    try:
        references = {key: launch(job[0], root / key / "reference.log") for key, job in jobs.items()}
        procs += references.values()
        victims, resumed = {}, {}
        deadline = time.monotonic() + 900
        while len(resumed) < len(jobs):
            for key, (_, victim_args, kill_at) in jobs.items():
                online = out[key]["reference"] / "online"
                if key not in victims and (kill_at or (online / "done.json").is_file()):
                    if kill_at is None:
                        split = split_checkpoint(read_jsonl(online / "progress.jsonl"), batch_pairs(online.parent))
                        out[key]["split"], kill_at = split, (split + EVERY, 0)
                    victims[key] = launch(victim_args, root / key / "killed.log", kill_at)
                    procs.append(victims[key])
                elif key in victims and key not in resumed and victims[key].poll() is not None:
                    log = root / key / "killed.log"
                    assert victims[key].returncode == -signal.SIGKILL, f"{key}: not killed:\n{log.read_text()[-3000:]}"
                    out[key]["killed_at"] = killed_state(out[key]["killed"])
                    resumed[key] = launch(victim_args, root / key / "resumed.log")
                    procs.append(resumed[key])
                if references[key].poll() not in (None, 0):
                    wait_ok(references[key], root / key / "reference.log")
            assert time.monotonic() < deadline, "the runs did not reach their kills within 900 s"
            time.sleep(0.1)
        for key in jobs:
            wait_ok(resumed[key], root / key / "resumed.log")
            wait_ok(references[key], root / key / "reference.log")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


# ------------------------------------------------------------------ each strategy's own progress fields

def check_mcts(line: dict, cfg: dict) -> None:
    assert 1 <= line["depth"] <= cfg["max_depth"] + 1  # below max_depth one step writes the rest of the answer
    assert line["simulations"] >= cfg["simulations"] * cfg["root_simulation_factor"]
    assert line["tree_nodes"] >= line["depth"]  # the committed path is in the tree
    assert isinstance(line["search_correct"], bool)
    assert line["pairs"]["policy"] <= cfg["max_pairs"]
    for node in line["pair_nodes"]:
        assert re.fullmatch(r"step:\d+", node) and int(node[5:]) <= cfg["max_depth"], node


def check_scdpo(line: dict, cfg: dict) -> None:
    right = line["samples_correct"]
    assert 0 <= right <= cfg["samples"]
    assert line["naive_pairs"] + line["step_pairs"] == line["pairs"]["policy"]
    assert line["naive_pairs"] <= min(right, cfg["samples"] - right, cfg["naive_pairs"])
    assert line["step_pairs"] <= min(line["cuts"], cfg["negatives_per_question"])
    assert right > 0 or line["cuts"] == 0  # cuts are made in a correct answer
    assert line["pair_nodes"].count("naive") == line["naive_pairs"]
    for node in line["pair_nodes"]:
        assert node == "naive" or (re.fullmatch(r"step:\d+", node) and int(node[5:]) < line["cuts"]), node


def check_naive(line: dict, cfg: dict) -> None:
    right = line["samples_correct"]
    assert 0 <= right <= cfg["samples"]
    assert line["pairs"]["policy"] == min(right, cfg["samples"] - right, cfg["pairs_per_question"])
    assert line["pair_nodes"] == ["answer"] * line["pairs"]["policy"]


CHECKS = {"mcts-dpo-tiny": check_mcts, "scdpo-tiny": check_scdpo, "naive-dpo-tiny": check_naive}


@pytest.mark.parametrize("recipe", RECIPES)
def test_reproduce_writes_the_strategys_run_folder(runs, recipe):
    run = runs[recipe]["reference"]
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["online"]["strategy"]["name"] == STRATEGY[recipe]
    assert saved["online"]["questions"] == QUESTIONS
    assert list(saved["adapters"]) == ["policy"]
    for stage in ("baseline", "online", "compile", "evaluate"):
        assert (run / stage / "done.json").is_file(), stage
    assert (run / "report" / "report.md").is_file()

    lines = read_jsonl(run / "online" / "progress.jsonl")
    assert [(line["index"], line["id"]) for line in lines] == [(i, f"arith-{i}") for i in range(QUESTIONS)]
    cfg = saved["online"]["strategy"]
    for line in lines:
        assert set(line["pairs"]) == {"policy"} and set(line["updates"]) <= {"policy"}
        assert len(line["pair_nodes"]) == line["pairs"]["policy"]
        for key in ("correct_before", "frozen_correct", "zero_shot_correct"):
            assert isinstance(line[key], bool), key
        assert isinstance(line["tokens"], int) and line["tokens"] > 0
        CHECKS[recipe](line, cfg)
    total = sum(line["pairs"]["policy"] for line in lines)
    assert total > 0, "no pairs at all"
    done = json.loads((run / "online" / "done.json").read_text())
    assert done["questions"] == QUESTIONS and done["pairs"] == {"policy": total}

    assert sorted(p.name for p in (run / "online" / "adapters").iterdir() if p.is_dir()) == ["policy"]
    weights = load_file(run / "online" / "adapters" / "policy" / "adapter_model.safetensors")
    assert weights and all("lora_" in key for key in weights)

    models = json.loads((run / "evaluate" / "done.json").read_text())["models"]
    limit = saved["eval"]["tasks"][0]["limit"]
    assert set(models) == EVAL_MODELS
    for name, records in models.items():
        assert (run / "evaluate" / name / "records.json").is_file(), name
        assert [(r["task"], r["n"]) for r in records] == [("arith", limit)], name
        assert any(metric.endswith(",flexible-extract") for metric in records[0]["metrics"]), name


# ------------------------------------------------------------------ kill and resume

def assert_same_ending(ref: Path, killed: Path, checkpoint: str) -> None:
    """The killed-and-resumed run's log, final checkpoint, saved adapter and summary are the reference's."""
    ref_online, killed_online = ref / "online", killed / "online"
    assert strip_seconds(read_jsonl(killed_online / "progress.jsonl")) == strip_seconds(
        read_jsonl(ref_online / "progress.jsonl"))
    assert json.loads((killed_online / "checkpoint" / "latest.json").read_text())["checkpoint"] == checkpoint
    for part in ("adapters.pt", "learners.pt"):
        a = torch.load(ref_online / "checkpoint" / checkpoint / part)
        b = torch.load(killed_online / "checkpoint" / checkpoint / part)
        assert same_tensors(a, b), part
    a = load_file(ref_online / "adapters" / "policy" / "adapter_model.safetensors")
    b = load_file(killed_online / "adapters" / "policy" / "adapter_model.safetensors")
    assert same_tensors(a, b)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k), "the policy never stepped"
    dones = [json.loads((online / "done.json").read_text()) for online in (ref_online, killed_online)]
    for done in dones:
        done.pop("seconds"), done.pop("adapters")
        done["epochs"] = strip_seconds(done.get("epochs", []))
    assert dones[0] == dones[1]


@pytest.mark.parametrize("recipe", RECIPES)
def test_killed_online_run_resumes_to_the_uninterrupted_one(runs, recipe):
    ref, killed, split = runs[recipe]["reference"], runs[recipe]["killed"], runs[recipe]["split"]
    # killed as it was about to write the checkpoint after the split one: the lines since that one are on disk
    assert runs[recipe]["killed_at"] == {
        "latest": {"checkpoint": f"ckpt-{split:06d}", "position": split},
        "lines": split + EVERY, "epochs": 0, "done": False}
    assert split_checkpoint(read_jsonl(ref / "online" / "progress.jsonl"), batch_pairs(ref)) == split
    assert_same_ending(ref, killed, f"ckpt-{QUESTIONS:06d}")


def test_after_stream_epochs_and_resume_between_them(runs):
    ref, killed = runs["epochs"]["reference"], runs["epochs"]["killed"]
    lines = read_jsonl(ref / "online" / "progress.jsonl")
    assert len(lines) == QUESTIONS
    assert all(line["updates"] == {} for line in lines)  # after_stream: no step while the stream runs
    pairs = sum(line["pairs"]["policy"] for line in lines)
    assert pairs > EPOCH_BATCH, "the settings must give more than one step per epoch"
    epochs = read_jsonl(ref / "online" / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [0, 1]
    for epoch in epochs:
        steps = epoch["updates"]["policy"]
        assert [s["pairs"] for s in steps] == [min(EPOCH_BATCH, pairs - i) for i in range(0, pairs, EPOCH_BATCH)]
        assert isinstance(epoch["seconds"], float)
    assert epochs[0]["updates"] != epochs[1]["updates"]  # the second pass starts from the first one's weights
    # killed before the epoch-2 checkpoint: epoch 2's line is on disk, its checkpoint is not
    assert runs["epochs"]["killed_at"] == {
        "latest": {"checkpoint": f"ckpt-{QUESTIONS:06d}-epoch1", "position": QUESTIONS, "epochs": 1},
        "lines": QUESTIONS, "epochs": 2, "done": False}
    assert strip_seconds(read_jsonl(killed / "online" / "epochs.jsonl")) == strip_seconds(epochs)
    assert_same_ending(ref, killed, f"ckpt-{QUESTIONS:06d}-epoch2")

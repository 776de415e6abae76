"""`harness run online tiny-world`: on the tiny world (scripts/make_tiny_world.py) online Flow-DPO must beat the
frozen Flow by at least 10 points, significantly over the questions, with both agents learning; with learning
switched off (`online.dpo.lr=0`) the trained and frozen Flows answer every question alike.

Both runs start as subprocesses at once (the documented command), on a warm-up done once here in the tests' cache.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config.recipe import load_recipe
from harness.modeling.models import load_base
from harness.reporting.stats import mcnemar_exact
from harness.run.folder import read_jsonl

REPO = Path(__file__).resolve().parent.parent
OFF_QUESTIONS = 32
"""Questions of the `lr=0` run: enough for both curves to hold right and wrong answers and for steps to be taken."""


def harness_cmd(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run", "online", "tiny-world", "--run-dir", str(run_dir), *overrides]


@pytest.fixture(scope="module")
def world_runs(harness_cache, tmp_path_factory) -> dict[str, list[dict]]:
    """Progress lines of the recipe as written (`learning`) and of the same run with lr 0 (`off`)."""
    load_base(load_recipe("tiny-world").model)  # the warm-up, once, into the cache both subprocesses read
    root = tmp_path_factory.mktemp("tiny-world")
    commands = {"learning": harness_cmd(root / "learning"),
                "off": harness_cmd(root / "off", "online.dpo.lr=0", f"online.questions={OFF_QUESTIONS}")}
    env = dict(os.environ)  # the session's private cache, offline, one thread
    procs = {name: subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, cmd in commands.items()}
    try:
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{name}: {err[-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return {name: read_jsonl(root / name / "online" / "progress.jsonl") for name in procs}


def margins(lines: list[dict], agent: str, node: str | None = None) -> list[float]:
    """The agent's reward margin at each of its optimizer steps, in order; with `node`, only the steps on questions
    whose pairs for the agent all come from that node."""
    return [step["margin"] for line in lines for step in line["updates"].get(agent, [])
            if node is None or {n for n in line["pair_nodes"] if n.startswith(agent)} == {node}]


def test_trained_flow_beats_frozen_flow_significantly(world_runs):
    lines = world_runs["learning"]
    assert len(lines) == load_recipe("tiny-world").online.questions
    trained = [line["correct_before"] for line in lines]
    frozen = [line["frozen_correct"] for line in lines]
    only_trained = sum(t and not f for t, f in zip(trained, frozen))
    only_frozen = sum(f and not t for t, f in zip(trained, frozen))
    gain = (sum(trained) - sum(frozen)) / len(lines)
    p = mcnemar_exact(only_trained, only_frozen)
    print(f"trained {sum(trained)}/{len(lines)}, frozen {sum(frozen)}/{len(lines)}, "
          f"discordant {only_trained} vs {only_frozen}, McNemar p = {p:.2g}")
    assert 0.2 <= sum(frozen) / len(lines) <= 0.6  # the frozen Flow sits at a moderate accuracy
    assert gain >= 0.10
    assert p < 0.01


# Chunk 0 is the work ("4 + 3 = 7.", 10 tokens), so node answer:1 is the answer line's first chunk or the end of
# turn: the Answer agent's own error. Its pairs at answer:0 are arithmetic slips; once the answer line is learned
# they are the only answer pairs left, and they come out with negative margins: the steps that taught the answer
# line also raised neighbouring digits (likelihood displacement, arXiv 2410.08847), which these pairs then repair.
LEARNED = {"answer": "answer:1", "stop": None}


@pytest.mark.parametrize("agent", ["answer", "stop"])
def test_both_agents_learn(world_runs, agent):
    """The agent's DPO reward margin on its own error grows over its steps: the median of the later half of those
    steps is well above that of the earlier half (medians: a rare pair against a drifted token does not decide)."""
    steps = margins(world_runs["learning"], agent, LEARNED[agent])
    assert len(steps) >= 8, steps
    half = len(steps) // 2
    assert statistics.median(steps[half:]) > statistics.median(steps[:half]) + 0.5, steps


def test_without_learning_trained_and_frozen_agree_on_every_question(world_runs):
    lines = world_runs["off"]
    assert len(lines) == OFF_QUESTIONS
    assert [line["correct_before"] for line in lines] == [line["frozen_correct"] for line in lines]
    assert 0 < sum(line["frozen_correct"] for line in lines) < OFF_QUESTIONS
    steps = {agent: margins(lines, agent) for agent in ("answer", "stop")}
    assert all(steps.values()) and all(m == 0.0 for ms in steps.values() for m in ms)  # stepped, moved nothing

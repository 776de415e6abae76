"""`harness doctor`: on a CPU it says what it would check; its checks run (on the stand-in) and give figures."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import on_cuda

from harness.cli import main as cli_main
from harness.config.recipe import load_recipe
from harness.tools.doctor import recipe_shape


def test_without_a_gpu_doctor_lists_its_checks(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_main(["doctor", "llama3-8b"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device here" in out
    assert "11 pairs of a" in out and "160-token completions" in out  # per-question: at most 11 nodes' pairs
    assert "2000 questions" in out and "(1: main chains; 11: rollouts)" in out  # the paper's one-question loop


def test_shape_of_the_paper_recipe():
    shape = recipe_shape(load_recipe("llama3-8b"), template_tokens=100)
    assert shape.prompt_tokens == 100 + 200 + 5 * 160
    assert shape.pairs_per_step == 11
    # main chain 960, answer rollouts (6+5+...+1) x 160, stop rollouts (5+...+1) x 160, frozen and zero-shot 960 each
    assert shape.tokens_per_question == 960 + 21 * 160 + 15 * 160 + 2 * 960
    assert (shape.main_batch, shape.rollout_batch) == (1, 11)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU figures (no memory readings)")
def test_doctor_checks_run_on_the_stand_in(capsys, warm_tiny):
    assert cli_main(["doctor", "tiny", "--rehearse", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["memory_before"] == [] and report["dpo_step"]["peak_gib"] is None  # no GPU here
    assert report["dpo_step"]["pairs"] == 4 and report["dpo_step"]["seconds"] > 0
    assert all(v > 0 for v in report["decode_tokens_per_second"].values())
    projection = report["projection"]
    assert projection["online_hours_estimate"] > 0
    assert projection["dpo_steps"] == 8 * 2 * 5 // 4  # 8 rehearsed questions, 2 agents, 5 nodes, 4 pairs a step


@on_cuda
def test_on_a_gpu_doctor_reads_its_memory_and_the_dpo_steps_peak(capsys, warm_tiny):
    assert cli_main(["doctor", "tiny", "runtime.device=cuda", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    for readings in (report["memory_before"], report["memory_with_engine"]):
        assert [m["device"] for m in readings] == gpus
        assert all(0 < m["free_gib"] <= m["total_gib"] for m in readings)
    assert report["dpo_step"]["peak_gib"] > 0 and report["dpo_step"]["seconds"] > 0
    assert all(v > 0 for v in report["decode_tokens_per_second"].values())
    assert report["projection"]["online_hours_estimate"] > 0

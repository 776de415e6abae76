"""`harness doctor`: on a CPU it says what it would check; its checks run (on the stand-in) and give figures."""

from __future__ import annotations

import json

from harness.cli import main as cli_main
from harness.doctor import recipe_shape
from harness.recipe import load_recipe


def test_without_a_gpu_doctor_lists_its_checks(capsys):
    assert cli_main(["doctor", "llama3-8b"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device here" in out
    assert "11 pairs of a" in out and "160-token completions" in out  # per-question: at most 11 nodes' pairs
    assert "2000 questions" in out


def test_shape_of_the_paper_recipe():
    shape = recipe_shape(load_recipe("llama3-8b"), template_tokens=100)
    assert shape.prompt_tokens == 100 + 200 + 5 * 160
    assert shape.pairs_per_step == 11
    # main chain 960, answer rollouts (6+5+...+1) x 160, stop rollouts (5+...+1) x 160, frozen and zero-shot 960 each
    assert shape.tokens_per_question == 960 + 21 * 160 + 15 * 160 + 2 * 960


def test_doctor_checks_run_on_the_stand_in(capsys, warm_tiny):
    assert cli_main(["doctor", "tiny", "--rehearse", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["memory_before"] == [] and report["dpo_step"]["peak_gib"] is None  # no GPU here
    assert report["dpo_step"]["pairs"] == 4 and report["dpo_step"]["seconds"] > 0
    assert report["decode_tokens_per_second"]["base"] > 0 and report["decode_tokens_per_second"]["answer_adapter"] > 0
    assert report["projection"]["online_hours_at_most"] > 0

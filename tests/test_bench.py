"""`harness bench flow`: its figures are consistent with each other and with the work it did."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.tools.bench import NoReuse, bench_flow


def test_bench_flow_figures_are_consistent(tiny_recipe, warm_tiny):
    recipe = tiny_recipe("model.tiny.warmup_steps=300", "online.question_batch=4", "online.checkpoint_every=4")
    out = bench_flow(recipe, questions=4, workers=[1])
    assert out["questions"] == 4
    assert 0 < out["engine_tokens"] <= out["engine_tokens_drawn"]
    assert out["naive_tokens"] > 0
    assert out["ceiling_batch"] == round(out["mean_rollout_batch"]) > 1
    phases = out["phase_seconds"]
    assert phases["answer_generation"] + phases["stop_decisions"] <= out["engine_seconds"]
    # the continuous schedule does the phased order's work: the same traces, so the same kept tokens
    assert out["schedule"] == "continuous" and out["engine_tokens"] == out["phased_tokens"]
    by_phase = out["phases"]
    # the phased order spends time and writes tokens in both of its phases; Stop decisions take part of the engine's
    assert min(by_phase[p][k] for p in ("main_chain", "rollouts") for k in ("tokens", "seconds")) > 0
    assert 0 < by_phase["stop_decisions"]["share"] < 1
    assert 0 < by_phase["stop_decisions"]["bound_fraction"] < 1
    # the online loop's explore on one worker draws exactly the tokens the engine drew
    (one,) = out["workers"]
    assert (one["workers"], one["tokens"]) == (1, out["engine_tokens_drawn"])
    # speed itself is the bench's figure to print, not a timed test's to assert
    # rollouts continue their main chains and Stop prompts extend earlier ones: most prompt tokens are reused
    assert 0.3 < out["prefix_cache_share"] < 1


def test_naive_reference_reencodes_every_prefix(tiny_base):
    from harness.generation.hf import HFBackend

    model, tok = tiny_base()
    inner = HFBackend(model, tok)
    naive = NoReuse(inner)
    prompt = tok.encode("What is 1+2?", add_special_tokens=False)
    first = naive.generate([prompt], None, 5, 0.0)[0][0].token_ids
    naive.generate([prompt + first], None, 5, 0.0)
    naive.next_token_logprobs([prompt], None, [5, 6])
    naive.next_token_logprobs([prompt + first], None, [5, 6])
    assert inner.cached_tokens == 0
    inner.generate([prompt + first + [7]], None, 3, 0.0)  # without the wrapper the kept KV is used
    assert inner.cached_tokens > 0


def test_bench_cli_prints_one_json_object(warm_tiny, env_for_subprocess):
    res = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "flow", "--recipe", "tiny", "--json",
                          "--questions", "2", "model.tiny.warmup_steps=300", "online.question_batch=2",
                          "online.checkpoint_every=2"],
                         capture_output=True, text=True, timeout=600, env=env_for_subprocess)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["questions"] == 2
    # the bench's headline figures, all present and numbers
    for key in ("engine_tokens_per_s", "naive_tokens_per_s", "speedup", "ceiling_tokens_per_s", "ceiling_fraction"):
        assert isinstance(out[key], float), key
    assert set(out["phase_seconds"]) == {"main_chain", "rollouts", "answer_generation", "stop_decisions"}


def test_worker_counts_are_positive_integers():
    import argparse

    from harness.cli import worker_counts

    assert worker_counts("1,2,4") == [1, 2, 4]
    for bad in ("0,2", "a", "1,,2", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="worker counts of 1 or more"):
            worker_counts(bad)

"""The vLLM backend against the HF backend on the tiny model, in fp32: same greedy ids, log-probs, EOS
handling and Yes probabilities, with no adapter, with each adapter, and after an adapter update.

Needs vllm (vllm-cpu on CPU machines): run with `tox -e vllm-cpu`; skipped where vllm is not installed.
One engine is started per module (start-up dominates the run time).
"""

from __future__ import annotations

import copy
import os
from collections import Counter

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default is sized for real models
pytest.importorskip("vllm")

import torch  # noqa: E402

from harness.config.recipe import LoraSpec, ModelConfig  # noqa: E402
from harness.generation.backend import yes_probability  # noqa: E402
from harness.generation.hf import HFBackend  # noqa: E402
from harness.generation.vllm import VLLMBackend  # noqa: E402
from harness.modeling.models import load_base, with_adapters  # noqa: E402

pytestmark = pytest.mark.vllm

TEXTS = ["What is 2+3?", "Tom has 7 apples and eats 2. How many are left?", "x", "Solve: 12*4 = "]
MAX_NEW = 24
TOL = 1e-4  # measured differences are ~1e-7 in fp32


def fill_lora_b(model, name: str, seed: int, scale: float = 0.3) -> None:
    """Make adapter `name` non-zero (peft initialises lora_B to zero, which would make it a no-op)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            b = getattr(module, "lora_B", None)
            if b is not None and name in b:
                weight = b[name].weight
                weight.copy_(torch.randn(weight.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny base model saved to disk, the same model with two non-zero adapters, and both backends."""
    model, tok = load_base(ModelConfig(name="tiny", dtype="float32"))
    prompts = [tok.encode(t) for t in TEXTS]
    # Random weights rarely pick EOS: make EOS outscore the most common greedy token, so that EOS
    # handling (stop, `finished`, lengths) is exercised on some prompts and not on others.
    plain = HFBackend(model, tok).generate(prompts, None, MAX_NEW, 0.0)
    common = Counter(t for row in plain for s in row for t in s.token_ids).most_common(1)[0][0]
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = 1.5 * model.lm_head.weight[common]
    base_dir = tmp_path_factory.mktemp("tiny-base")
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    # peft injects LoRA layers in place: wrap a copy, after the base was saved.
    peft_model = with_adapters(copy.deepcopy(model), {"answer": LoraSpec(), "stop": LoraSpec()})
    fill_lora_b(peft_model, "answer", seed=1)
    fill_lora_b(peft_model, "stop", seed=2)
    hf = HFBackend(peft_model, tok)
    vllm = VLLMBackend(str(base_dir), tok, peft_model, dtype="float32", max_lora_rank=8,
                       workdir=tmp_path_factory.mktemp("vllm-work"), enforce_eager=True, max_model_len=256)
    yield {"tok": tok, "prompts": prompts, "model": peft_model, "hf": hf, "vllm": vllm}
    vllm.close()


def ids(samples) -> list[list[list[int]]]:
    return [[s.token_ids for s in row] for row in samples]


def assert_same_greedy(hf, vllm, prompts, adapter) -> list[list[int]]:
    """Greedy ids, `finished` and per-token log-probs agree; returns the ids."""
    a = hf.generate(prompts, adapter, MAX_NEW, 0.0)
    b = vllm.generate(prompts, adapter, MAX_NEW, 0.0)
    assert ids(a) == ids(b), f"adapter={adapter}"
    for row_a, row_b in zip(a, b):
        assert row_a[0].finished == row_b[0].finished
        assert row_a[0].logprobs == pytest.approx(row_b[0].logprobs, abs=TOL)
    return [row[0].token_ids for row in a]


def test_greedy_matches_hf_base_and_adapters(setup):
    hf, vllm, prompts = setup["hf"], setup["vllm"], setup["prompts"]
    base = assert_same_greedy(hf, vllm, prompts, None)
    answer = assert_same_greedy(hf, vllm, prompts, "answer")
    stop = assert_same_greedy(hf, vllm, prompts, "stop")
    assert answer != base and stop != base and answer != stop, "adapters must change outputs"
    eos = setup["tok"].eos_token_id
    ends = [row[-1] == eos for row in base + answer + stop]
    assert any(ends) and not all(ends), "EOS should end some samples and not others"


def test_adapter_update_is_served(setup):
    hf, vllm, prompts, model = setup["hf"], setup["vllm"], setup["prompts"], setup["model"]
    before = vllm.generate(prompts, "answer", MAX_NEW, 0.0)
    old_id = vllm.lora_request("answer").lora_int_id
    fill_lora_b(model, "answer", seed=3)  # an online step changes the weights in place
    vllm.adapters_updated(["answer"])
    assert vllm.lora_request("answer").lora_int_id != old_id
    after = assert_same_greedy(hf, vllm, prompts, "answer")
    assert after != [row[0].token_ids for row in before], "the update must change outputs"
    assert_same_greedy(hf, vllm, prompts, "stop")  # the other adapter is untouched


@pytest.mark.parametrize("rule", ["yes_vs_no", "yes_prob"])
@pytest.mark.parametrize("adapter", [None, "answer", "stop"])
def test_yes_probability_matches_hf(setup, adapter, rule):
    tok = setup["tok"]
    yes_id, no_id = tok.convert_tokens_to_ids("Y"), tok.convert_tokens_to_ids("N")
    a = yes_probability(setup["hf"], setup["prompts"], adapter, yes_id, no_id, rule)
    b = yes_probability(setup["vllm"], setup["prompts"], adapter, yes_id, no_id, rule)
    assert b == pytest.approx(a, abs=TOL)


def test_sampling_is_seeded_and_logprobs_are_of_the_sampling_distribution(setup):
    """Seeded sampling repeats; each log-prob is the token's under softmax(logits / T) (HF's scores)."""
    vllm, model, prompts = setup["vllm"], setup["model"], setup["prompts"]
    temperature = 0.8
    a = vllm.generate(prompts, "answer", 8, temperature, n=3, seed=7)
    assert ids(a) == ids(vllm.generate(prompts, "answer", 8, temperature, n=3, seed=7))
    assert all(len(row) == 3 for row in a) and len({tuple(s.token_ids) for row in a for s in row}) > 1
    model.set_adapter("answer")
    with torch.no_grad():
        for prompt, row in zip(prompts, a):
            for s in row:
                full = torch.tensor([prompt + s.token_ids])
                logits = model(input_ids=full).logits[0, len(prompt) - 1 : -1].float()
                expected = torch.log_softmax(logits / temperature, -1).gather(
                    -1, torch.tensor(s.token_ids).unsqueeze(-1)).squeeze(-1)
                assert s.logprobs == pytest.approx(expected.tolist(), abs=TOL)


def test_online_stage_runs_on_vllm(tmp_path):
    """`harness run online tiny backend=vllm`: the Flow, rollouts and updates with vLLM serving new adapters."""
    import json
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "harness.cli", "run", "online", "tiny", "--run-dir", str(run_dir),
                          "backend=vllm", "online.questions=6", "online.dpo.batch_pairs=1"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in (run_dir / "online/progress.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    assert sum(len(v) for line in lines for v in line["updates"].values()) >= 1


def test_per_prompt_budgets_match_hf(setup):
    hf, vllm, prompts = setup["hf"], setup["vllm"], setup["prompts"]
    budgets = [1, 3, 5, 7]
    assert ids(vllm.generate(prompts, None, budgets, 0.0)) == ids(hf.generate(prompts, None, budgets, 0.0))


def test_prefix_cache_serves_a_prompt_that_extends_an_earlier_one(setup):
    vllm, tok = setup["vllm"], setup["tok"]
    prompt = tok.encode("Question: " + "Ann has 3 apples and 4 pears. " * 4 + "How many fruits?")
    assert len(prompt) > 96
    first = vllm.generate([prompt], "answer", 4, 0.0)[0][0].token_ids
    before = vllm.cached_tokens
    vllm.generate([prompt + first], "answer", 4, 0.0)
    # whole 32-token blocks of the earlier prompt are served from the cache (the CPU default block is 128)
    assert vllm.cached_tokens - before >= 64


def test_per_prompt_temperatures_match_hf_on_greedy_rows_and_equal_temperatures_match_one(setup):
    hf, vllm, prompts = setup["hf"], setup["vllm"], setup["prompts"]
    temperatures = [0.0, 0.8, 0.0, 0.8]
    mixed = vllm.generate(prompts, "answer", MAX_NEW, temperatures, n=2, seed=5)
    greedy = hf.generate(prompts, "answer", MAX_NEW, 0.0, n=2)
    for t, row, greedy_row in zip(temperatures, mixed, greedy):
        if t == 0.0:
            assert ids([row]) == ids([greedy_row])
    # each request carries its own seed: equal per-prompt temperatures are the one-temperature call
    assert ids(vllm.generate(prompts, "answer", 8, [0.8] * 4, n=2, seed=5)) == ids(
        vllm.generate(prompts, "answer", 8, 0.8, n=2, seed=5))


def test_stop_sequences_match_hf(setup):
    """One-id stops go to vLLM's stop_token_ids, longer ones are cut out of the returned ids: both as in HF."""
    hf, vllm, prompts = setup["hf"], setup["vllm"], setup["prompts"]
    free = [row[0].token_ids for row in hf.generate(prompts, None, MAX_NEW, 0.0)]
    longest = max(range(len(prompts)), key=lambda i: len(free[i]))
    assert len(free[longest]) >= 8
    for stop in ([[free[longest][4]]], [free[longest][5:7]]):
        a = hf.generate(prompts, None, MAX_NEW, 0.0, stop=stop)
        b = vllm.generate(prompts, None, MAX_NEW, 0.0, stop=stop)
        assert ids(a) == ids(b), stop
        assert [(s.finished, s.stopped) for row in a for s in row] == [(s.finished, s.stopped) for row in b
                                                                        for s in row]
        assert a[longest][0].stopped and len(a[longest][0].token_ids) < len(free[longest])
        for row_a, row_b in zip(a, b):
            assert row_a[0].logprobs == pytest.approx(row_b[0].logprobs, abs=TOL)


@pytest.mark.parametrize("adapter", [None, "stop"])
def test_next_token_logprobs_and_the_yes_helper_match_hf(setup, adapter):
    tok, hf, vllm, prompts = setup["tok"], setup["hf"], setup["vllm"], setup["prompts"]
    token_ids = [tok.convert_tokens_to_ids("Y"), tok.convert_tokens_to_ids("N"), tok.eos_token_id, 0]
    a = hf.next_token_logprobs(prompts, adapter, token_ids)
    b = vllm.next_token_logprobs(prompts, adapter, token_ids)
    for row_a, row_b in zip(a, b, strict=True):
        assert row_b == pytest.approx(row_a, abs=TOL)
    yes_id, no_id = token_ids[:2]
    assert yes_probability(vllm, prompts, adapter, yes_id, no_id, "yes_vs_no") == pytest.approx(
        yes_probability(hf, prompts, adapter, yes_id, no_id, "yes_vs_no"), abs=TOL)

"""HFBackend: adapter switching, seeding, log-probs, EOS and stop handling, per-prompt temperatures, left padding,
next-token log-probs and the Yes/No probability; the step stop ids."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import on_each_device

from harness.config.recipe import LoraSpec
from harness.generation.backend import yes_probability
from harness.generation.hf import HFBackend
from harness.generation.steps import step_stop_ids
from harness.modeling.models import with_adapters

QUESTIONS = ["What is 1+2?", "Hi", "Ann has 7 apples and gets 5 more. How many now?", "x"]


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def greedy_ids(backend: HFBackend, prompts, adapter, tokens: int = 12) -> list[list[int]]:
    return [row[0].token_ids for row in backend.generate(prompts, adapter, tokens, 0.0)]


def plain_last_logits(model, prompt: list[int]) -> torch.Tensor:
    """Next-token logits of one unpadded prompt: no mask, no position ids, no batch."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([prompt], device=model.device)).logits[0, -1].float().cpu()


def test_adapter_none_equals_base_model_and_zero_adapters_equal_base(tiny_base):
    base, tok = tiny_base()
    prompts = [encode(tok, q) for q in QUESTIONS]
    plain = HFBackend(base, tok)
    base_ids = greedy_ids(plain, prompts, None)
    base_yes = yes_probability(plain, prompts, None, 5, 6)
    with pytest.raises(ValueError, match="no adapters"):
        plain.generate(prompts, "answer", 4, 0.0)

    model, tok2 = tiny_base()  # same seed: the same random weights
    peft = with_adapters(model, {"answer": LoraSpec(), "stop": LoraSpec()})
    backend = HFBackend(peft, tok2)
    for adapter in (None, "answer", "stop"):
        assert greedy_ids(backend, prompts, adapter) == base_ids, adapter
        # equal up to float rounding (the vocabulary head sees one position: shapes differ from the plain model's)
        assert yes_probability(backend, prompts, adapter, 5, 6) == pytest.approx(base_yes, abs=1e-6), adapter
    with pytest.raises(ValueError, match="unknown adapter"):
        backend.generate(prompts, "nope", 4, 0.0)


def test_switching_adapters_changes_outputs(tiny_base, perturb):
    base, tok = tiny_base()
    prompts = [encode(tok, q) for q in QUESTIONS]
    base_ids = greedy_ids(HFBackend(base, tok), prompts, None)

    model, _ = tiny_base()
    peft = with_adapters(model, {"answer": LoraSpec(), "stop": LoraSpec()})
    perturb(peft, "answer", seed=1)
    backend = HFBackend(peft, tok)

    answer_ids = greedy_ids(backend, prompts, "answer")
    assert answer_ids != base_ids
    assert greedy_ids(backend, prompts, "stop") == base_ids  # still zero
    assert greedy_ids(backend, prompts, None) == base_ids  # adapters disabled = base model
    assert greedy_ids(backend, prompts, "answer") == answer_ids  # switching back is stateless
    yes_answer = yes_probability(backend, prompts, "answer", 5, 6)
    yes_base = yes_probability(backend, prompts, None, 5, 6)
    assert all(not math.isclose(a, b, abs_tol=1e-6) for a, b in zip(yes_answer, yes_base))


def test_same_seed_same_samples_different_seed_different(tiny_base):
    model, tok = tiny_base()
    backend = HFBackend(model, tok)
    prompts = [encode(tok, q) for q in QUESTIONS[:2]]

    def draw(seed):
        backend.reset_cache(None)  # a call is a pure function of its inputs from a clean KV store
        out = backend.generate(prompts, None, 16, 1.0, n=3, seed=seed)
        return [(s.token_ids, s.logprobs, s.finished) for row in out for s in row]

    first = draw(7)
    assert len(first) == 6
    assert draw(7) == first
    assert draw(8) != first
    # the n samples of one prompt are different draws
    assert len({tuple(ids) for ids, _, _ in first[:3]}) == 3


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_first_tokens_follow_the_sampling_distribution(tiny_base, top_p):
    """4000 one-token samples of one prompt: their frequencies are the (nucleus) softmax of a plain forward."""
    from transformers import TopPLogitsWarper

    model, tok = tiny_base()
    prompt = encode(tok, QUESTIONS[0])
    out = HFBackend(model, tok).generate([prompt], None, 1, 0.7, top_p=top_p, n=4000, seed=5)[0]
    with torch.no_grad():
        scores = model(input_ids=torch.tensor([prompt])).logits[0, -1:].float() / 0.7
    probs = torch.softmax(TopPLogitsWarper(top_p)(None, scores) if top_p < 1 else scores, -1)[0]
    counts = torch.bincount(torch.tensor([s.token_ids[0] for s in out]), minlength=len(probs)).float()
    assert (counts[probs == 0] == 0).all()  # nothing outside the nucleus
    expected = 4000 * probs[probs > 0]
    chi2 = ((counts[probs > 0] - expected) ** 2 / expected).sum().item()
    dof = len(expected) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5  # Pearson's test: far beyond its mean (dof) only if the draws are off


def test_logprobs_are_the_sampling_distribution(tiny_base):
    model, tok = tiny_base()
    backend = HFBackend(model, tok)
    prompts = [encode(tok, q) for q in QUESTIONS]
    for temperature in (1.0, 0.5):
        out = backend.generate(prompts, None, 10, temperature, n=2, seed=3)
        assert [len(row) for row in out] == [2] * len(prompts)
        for prompt, row in zip(prompts, out):
            for sample in row:
                assert len(sample.logprobs) == len(sample.token_ids) > 0
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([prompt + sample.token_ids])).logits[0]
                steps = logits[len(prompt) - 1 : -1].float() / temperature
                manual = torch.log_softmax(steps, -1).gather(-1, torch.tensor(sample.token_ids)[:, None])[:, 0]
                torch.testing.assert_close(torch.tensor(sample.logprobs), manual, atol=1e-4, rtol=1e-4)


def test_finished_iff_sample_ends_with_eos(tiny_base):
    model, tok = tiny_base()
    backend = HFBackend(model, tok)
    eos = tok.eos_token_id
    prompts = [encode(tok, q) for q in QUESTIONS[:2]]
    max_new = 40
    samples = [s for row in backend.generate(prompts, None, max_new, 2.0, n=32, seed=5) for s in row]
    for s in samples:
        assert s.finished == (s.token_ids[-1] == eos)
        assert eos not in s.token_ids[:-1]  # nothing kept after the EOS (no padding either)
        if not s.finished:
            assert len(s.token_ids) == max_new
        assert len(s.token_ids) <= max_new
    finished = sum(s.finished for s in samples)
    assert 0 < finished < len(samples), "the hot sampling should give both EOS-ended and cut-off samples"


@on_each_device
def test_left_padded_batch_equals_each_prompt_alone(tiny_base, device):
    model, tok = tiny_base(device)
    prompts = [encode(tok, q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == len(prompts)
    batched = HFBackend(model, tok).generate(prompts, None, 12, 0.0)
    for prompt, row in zip(prompts, batched):
        alone = HFBackend(model, tok).generate([prompt], None, 12, 0.0)[0][0]
        assert row[0].token_ids == alone.token_ids
        torch.testing.assert_close(torch.tensor(row[0].logprobs), torch.tensor(alone.logprobs), atol=1e-4,
                                   rtol=1e-4)
    # a backend that splits the batch gives the same greedy answers
    split = HFBackend(model, tok, max_batch=3).generate(prompts, None, 12, 0.0)
    assert [r[0].token_ids for r in split] == [r[0].token_ids for r in batched]


@pytest.mark.parametrize("rule", ["yes_vs_no", "yes_prob"])
@on_each_device
def test_yes_probability_equals_manual_softmax_of_unpadded_forward(tiny_base, perturb, rule, device):
    model, tok = tiny_base(device)
    peft = with_adapters(model, {"answer": LoraSpec(), "stop": LoraSpec()})
    perturb(peft, "stop", seed=2, scale=0.2)
    backend = HFBackend(peft, tok)
    yes_id, no_id = encode(tok, "Yes")[0], encode(tok, "No")[0]
    prompts = [encode(tok, q) for q in QUESTIONS]  # different lengths: rows are left-padded

    for adapter in ("stop", None):
        probs = yes_probability(backend, prompts, adapter, yes_id, no_id, rule)
        assert len(probs) == len(prompts)
        for prompt, p in zip(prompts, probs):
            assert 0.0 <= p <= 1.0
            with backend.adapter(adapter):
                logits = plain_last_logits(peft, prompt)
            if rule == "yes_vs_no":
                manual = torch.softmax(torch.stack([logits[yes_id], logits[no_id]]), -1)[0].item()
            else:
                manual = torch.softmax(logits, -1)[yes_id].item()
            assert math.isclose(p, manual, rel_tol=1e-4, abs_tol=1e-6), (adapter, prompt, p, manual)
    # the perturbed Stop adapter is really used
    with_stop = yes_probability(backend, prompts, "stop", yes_id, no_id, rule)
    without = yes_probability(backend, prompts, None, yes_id, no_id, rule)
    assert with_stop != without


def transformers_greedy(model, prompt: list[int], tokens: int, eos: int) -> list[int]:
    """transformers' own generate on one unpadded prompt: the reference for the backend's decoding loop."""
    with torch.no_grad():
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=eos)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("row_tokens", [512, 8])
@on_each_device
def test_greedy_ids_equal_transformers_generate_with_shared_prefixes(tiny_base, perturb, row_tokens, device):
    model, tok = tiny_base(device)
    peft = with_adapters(model, {"answer": LoraSpec(), "stop": LoraSpec()})
    perturb(peft, "answer", seed=4, scale=0.2)
    # prompts that extend each other, repeat, and share nothing: one packed tree, or many small rows
    prompts = [encode(tok, q) for q in ("What is 1+2?", "What is 1+2? It is", "What is 1+2?", "Hi there",
                                        "What is 7*8?")]
    backend = HFBackend(peft, tok, row_tokens=row_tokens)
    for adapter in ("answer", None):
        got = greedy_ids(backend, prompts, adapter, tokens=20)
        with backend.adapter(adapter):
            want = [transformers_greedy(peft, p, 20, tok.eos_token_id) for p in prompts]
        # transformers pads a finished row with EOS; the backend stops at the first EOS
        want = [w[: w.index(tok.eos_token_id) + 1] if tok.eos_token_id in w else w for w in want]
        assert got == want, adapter
    assert backend.cached_tokens > 0  # the shared prefixes were encoded once


def test_per_prompt_budgets_cut_each_sample_and_leave_the_others_unchanged(tiny_base):
    model, tok = tiny_base()
    eos = tok.eos_token_id
    backend = HFBackend(model, tok)
    prompts = [encode(tok, q) for q in QUESTIONS]
    full = [row[0] for row in backend.generate(prompts, None, 12, 0.0)]
    budgets = [3, 12, 1, 7]
    cut = [row[0] for row in backend.generate(prompts, None, budgets, 0.0)]
    for whole, part, budget in zip(full, cut, budgets):
        assert part.token_ids == whole.token_ids[:budget]
        assert part.finished == (part.token_ids[-1] == eos)
    with pytest.raises(ValueError, match="max_new_tokens"):
        backend.generate(prompts, None, [3, 4], 0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        backend.generate(prompts, None, 0, 0.0)


@on_each_device
def test_prompts_extending_earlier_calls_reuse_their_kv_and_give_the_same_results(tiny_base, perturb, device):
    model, tok = tiny_base(device)
    peft = with_adapters(model, {"answer": LoraSpec(), "stop": LoraSpec()})
    perturb(peft, "answer", seed=5, scale=0.2)
    perturb(peft, "stop", seed=6, scale=0.2)
    kept = HFBackend(peft, tok)
    fresh = HFBackend(peft, tok, kv_store_tokens=0)
    prompts = [encode(tok, q) for q in QUESTIONS]
    first = greedy_ids(kept, prompts, "answer", tokens=6)
    assert first == greedy_ids(fresh, prompts, "answer", tokens=6)
    # the next chunk: prompt + the previous chunk, as the Flow asks for it
    longer = [p + ids for p, ids in zip(prompts, first)]
    before = kept.cached_tokens
    assert greedy_ids(kept, longer, "answer", tokens=8) == greedy_ids(fresh, longer, "answer", tokens=8)
    assert kept.cached_tokens - before >= sum(len(p) - 1 for p in longer) - len(QUESTIONS)
    # Stop prompts that extend earlier Stop prompts' prefixes
    yes, no = encode(tok, "Yes")[0], encode(tok, "No")[0]
    yes_probability(kept, prompts, "stop", yes, no)
    before = kept.cached_tokens
    probs = yes_probability(kept, longer, "stop", yes, no)
    assert kept.cached_tokens - before >= sum(len(p) - 1 for p in prompts)
    assert probs == pytest.approx(yes_probability(fresh, longer, "stop", yes, no), abs=1e-5)


def test_kept_kv_is_dropped_when_the_weights_change(tiny_base, perturb):
    model, tok = tiny_base()
    peft = with_adapters(model, {"answer": LoraSpec(), "stop": LoraSpec()})
    kept = HFBackend(peft, tok)
    prompts = [encode(tok, q) for q in QUESTIONS]
    first = greedy_ids(kept, prompts, "answer", tokens=6)
    perturb(peft, "answer", seed=7, scale=0.5)  # an in-place update, as an optimizer step does
    longer = [p + ids for p, ids in zip(prompts, first)]
    before = kept.cached_tokens
    got = greedy_ids(kept, longer, "answer", tokens=8)
    assert got == greedy_ids(HFBackend(peft, tok, kv_store_tokens=0), longer, "answer", tokens=8)
    # nothing came from the store (and these prompts share no prefix inside the call)
    assert kept.cached_tokens - before == 0
    kept.reset_cache("answer")
    assert kept.stores["answer"].entries == []


def test_generation_stops_at_every_eos_id_of_the_generation_config(tiny_base):
    """Llama-3 ends turns with <|eot_id|> and Phi-3 with <|end|>, both listed in generation_config beside the
    tokenizer's EOS: a backend that stops only at the tokenizer's EOS writes past the end of the turn."""
    model, tok = tiny_base()
    prompt = encode(tok, QUESTIONS[0])
    free = HFBackend(model, tok).generate([prompt], None, 24, 0.0)[0][0].token_ids
    extra = next(t for t in free[2:] if t != tok.eos_token_id)
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    backend = HFBackend(model, tok)
    assert backend.eos_token_ids == [tok.eos_token_id, extra]
    got = backend.generate([prompt], None, 24, 0.0)[0][0]
    assert got.token_ids == free[: free.index(extra) + 1] and got.finished


def sample_tuples(out) -> list[tuple]:
    return [(s.token_ids, s.logprobs, s.finished, s.stopped) for row in out for s in row]


@on_each_device
def test_a_prompts_samples_depend_on_its_seed_not_on_the_rest_of_the_call(tiny_base, device):
    model, tok = tiny_base(device)
    prompts = [encode(tok, q) for q in QUESTIONS]
    seeds = [101, 7, 55, 3]

    def call(backend, chosen, **kw):
        return backend.generate([prompts[i] for i in chosen], None, 8, 1.0, top_p=0.9, n=2,
                                seed=[seeds[i] for i in chosen], **kw)

    def same(a, b) -> bool:  # the same draws; log-probs equal up to the float rounding of other batch shapes
        return ([(ids, end, stop) for ids, _, end, stop in a] == [(ids, end, stop) for ids, _, end, stop in b]
                and all(x == pytest.approx(y, abs=1e-5) for (_, x, *_), (_, y, *_) in zip(a, b)))

    together = sample_tuples(call(HFBackend(model, tok), range(4)))
    alone = [s for i in range(4) for s in sample_tuples(call(HFBackend(model, tok), [i]))]
    assert same(together, alone)
    reordered = sample_tuples(call(HFBackend(model, tok, max_batch=2), [2, 0, 3, 1]))
    assert same(reordered, [together[k] for i in (2, 0, 3, 1) for k in (2 * i, 2 * i + 1)])
    assert len({tuple(ids) for ids, *_ in together}) > 4  # real draws: the two continuations of a prompt differ
    # an int seed s gives prompt i the seed s + i * n; equal per-prompt temperatures are the one temperature
    assert (sample_tuples(HFBackend(model, tok).generate(prompts, None, 8, 1.0, n=2, seed=11))
            == sample_tuples(HFBackend(model, tok).generate(prompts, None, 8, [1.0] * 4, n=2, seed=[11, 13, 15, 17])))
    assert sample_tuples(call(HFBackend(model, tok), range(4), stop=[])) == together


def test_per_prompt_temperatures_greedy_rows_are_greedy_and_sampled_rows_use_their_own(tiny_base):
    model, tok = tiny_base()
    prompts = [encode(tok, q) for q in QUESTIONS]
    temperatures = [0.0, 1.0, 0.0, 0.5]
    mixed = HFBackend(model, tok).generate(prompts, None, 10, temperatures, n=2, seed=4)
    greedy = HFBackend(model, tok).generate(prompts, None, 10, 0.0, n=2)
    for t, prompt, row, greedy_row in zip(temperatures, prompts, mixed, greedy):
        for sample, greedy_sample in zip(row, greedy_row):
            if t == 0.0:
                assert sample.token_ids == greedy_sample.token_ids
                assert sample.logprobs == pytest.approx(greedy_sample.logprobs, abs=1e-5)
                continue
            # a sampled row's log-probs are those of softmax(logits / its own temperature)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + sample.token_ids])).logits[0]
            steps = logits[len(prompt) - 1 : -1].float() / t
            manual = torch.log_softmax(steps, -1).gather(-1, torch.tensor(sample.token_ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(sample.logprobs), manual, atol=1e-4, rtol=1e-4)
    sampled = [s.token_ids for t, row in zip(temperatures, mixed) if t > 0 for s in row]
    assert len({tuple(ids) for ids in sampled}) == len(sampled)  # real draws, not the greedy answer
    with pytest.raises(ValueError, match="temperature"):
        HFBackend(model, tok).generate(prompts, None, 4, [1.0, 0.0])


def test_stop_sequences_end_samples_right_after_their_first_occurrence(tiny_base):
    model, tok = tiny_base()
    eos = tok.eos_token_id
    backend = HFBackend(model, tok)
    prompts = [encode(tok, q) for q in QUESTIONS]
    free = [row[0] for row in backend.generate(prompts, None, 24, 0.0)]
    assert not any(s.stopped for s in free)
    # a one-id stop taken from the middle of the first answer, and a two-id stop from the middle of the third
    one = free[0].token_ids[5]
    two = free[2].token_ids[10:12]
    stop = [[one], two]
    cut = [row[0] for row in backend.generate(prompts, None, 24, 0.0, stop=stop)]
    for whole, part in zip(free, cut):
        ends = [end for end in range(1, len(whole.token_ids) + 1)
                if whole.token_ids[end - 1] == one or whole.token_ids[max(0, end - 2) : end] == two]
        if ends:
            assert part.token_ids == whole.token_ids[: ends[0]] and part.stopped
            assert part.finished == (part.token_ids[-1] == eos)
        else:
            assert part.token_ids == whole.token_ids and not part.stopped
        assert part.logprobs == pytest.approx(whole.logprobs[: len(part.token_ids)], abs=1e-5)
    assert cut[0].token_ids[-1] == one and cut[2].token_ids[-2:] == two

    # sampling: every sample ends at its first stop, at EOS or at its budget, never earlier and never later
    samples = [s for row in backend.generate(prompts, None, 30, 1.5, n=8, seed=2, stop=[[one], two]) for s in row]
    for s in samples:
        hits = [end for end in range(1, len(s.token_ids) + 1)
                if s.token_ids[end - 1] == one or s.token_ids[max(0, end - 2) : end] == two]
        assert s.stopped == bool(hits) and hits[:1] in ([], [len(s.token_ids)])
        assert len(s.logprobs) == len(s.token_ids)
        assert s.stopped or s.finished or len(s.token_ids) == 30
        assert eos not in s.token_ids[:-1]
    assert 0 < sum(s.stopped for s in samples) < len(samples)
    with pytest.raises(ValueError, match="stop sequence"):
        backend.generate(prompts, None, 4, 0.0, stop=[[]])


def test_continuing_a_stopped_step_from_the_kv_store_equals_a_fresh_backend(tiny_base):
    model, tok = tiny_base()
    prompts = [encode(tok, q) for q in QUESTIONS]
    free = HFBackend(model, tok).generate(prompts, None, 24, 0.0)
    stop = [[free[0][0].token_ids[3]], [free[1][0].token_ids[2]]]
    kept, fresh = HFBackend(model, tok), HFBackend(model, tok, kv_store_tokens=0)
    first = [row[0] for row in kept.generate(prompts, None, 24, 0.0, stop=stop)]
    assert first[0].stopped and first[1].stopped
    steps = [sample.token_ids for sample in first]
    longer = [p + ids for p, ids in zip(prompts, steps)]
    before = kept.cached_tokens
    again = [row[0].token_ids for row in kept.generate(longer, None, 12, 0.0, stop=stop)]
    assert kept.cached_tokens > before  # the steps' KV came from the store
    assert again == [row[0].token_ids for row in fresh.generate(longer, None, 12, 0.0, stop=stop)]


@pytest.mark.parametrize("adapter", ["stop", None])
@on_each_device
def test_next_token_logprobs_equal_log_softmax_of_a_plain_forward(tiny_base, perturb, adapter, device):
    model, tok = tiny_base(device)
    peft = with_adapters(model, {"answer": LoraSpec(), "stop": LoraSpec()})
    perturb(peft, "stop", seed=2, scale=0.2)
    backend = HFBackend(peft, tok)
    prompts = [encode(tok, q) for q in QUESTIONS] + [encode(tok, QUESTIONS[0] + " 3")]  # shared prefixes too
    ids = [encode(tok, "Y")[0], encode(tok, "N")[0], tok.eos_token_id, 0, encode(tok, "Y")[0]]
    got = backend.next_token_logprobs(prompts, adapter, ids)
    assert [len(row) for row in got] == [len(ids)] * len(prompts)
    for prompt, row in zip(prompts, got):
        with backend.adapter(adapter):
            want = torch.log_softmax(plain_last_logits(peft, prompt), -1)[ids]
        torch.testing.assert_close(torch.tensor(row), want, atol=1e-5, rtol=0)
    assert backend.next_token_logprobs([], adapter, ids) == []


@on_each_device
def test_a_read_over_kept_prefixes_is_not_padded_to_a_new_prompt(tiny_base, perturb, device):
    """Prompts extending kept ones are read in a forward of their own, a row each as wide as their new tokens, apart
    from a whole new prompt (one forward would pad every row to its length), while prompts over one kept prefix
    that share new tokens stay in one forward and row; the values are a plain forward's."""
    model, tok = tiny_base(device)
    peft = with_adapters(model, {"stop": LoraSpec()})
    perturb(peft, "stop", seed=2, scale=0.2)
    backend = HFBackend(peft, tok)
    ids = [encode(tok, "Y")[0], encode(tok, "N")[0]]
    kept = [encode(tok, q) for q in QUESTIONS]
    backend.next_token_logprobs(kept, "stop", ids)
    extended = [prompt + encode(tok, f" then {k}?") for k, prompt in enumerate(kept)]
    prompts = extended + [encode(tok, "A new question that shares nothing with the others, read whole.")]
    shapes, forward = [], backend._encode
    backend._encode = lambda packing, cache: shapes.append(tuple(packing.ids.shape)) or forward(packing, cache)
    got = backend.next_token_logprobs(prompts, "stop", ids)
    widest = max(len(e) - len(k) for e, k in zip(extended, kept))
    assert len(shapes) == 2 and (len(extended), widest) in shapes  # the long prompt is read in its own forward
    # one trace's Stop prompts at three boundaries after a kept prefix: one forward, one row, shared tokens once
    boundaries = [extended[0] + encode(tok, text) for text in (" a", " a b", " a b c")]
    shapes.clear()
    got += backend.next_token_logprobs(boundaries, "stop", ids)
    assert shapes == [(1, len(boundaries[-1]) - len(extended[0]))]
    for prompt, row in zip(prompts + boundaries, got):
        with backend.adapter("stop"):
            want = torch.log_softmax(plain_last_logits(peft, prompt), -1)[ids]
        torch.testing.assert_close(torch.tensor(row), want, atol=1e-5, rtol=0)


def test_step_stop_ids_on_the_tiny_character_tokenizer(tiny_base):
    _, tok = tiny_base()
    newline, dot = tok.convert_tokens_to_ids("\n"), tok.convert_tokens_to_ids(".")
    assert step_stop_ids(tok, ["\n"]) == [[newline]]
    assert step_stop_ids(tok, ["\n", "."]) == sorted([[newline], [dot]])
    with pytest.raises(ValueError, match="delimiters"):
        step_stop_ids(tok, [""])


def merged_tokenizer():
    """A word-level tokenizer whose vocabulary merges newlines with their neighbours, as BPE vocabularies do."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "a": 1, "\n": 2, ".\n\n": 3, "\n\n": 4, "b": 5, ":\n": 6, ".": 7, "x\ny": 8}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens([AddedToken("<|turn\n|>", special=True, normalized=False)])  # id 9
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")


def test_step_stop_ids_find_every_merged_newline_token_but_no_special_one():
    tok = merged_tokenizer()
    assert tok.convert_tokens_to_ids("<|turn\n|>") == 9
    assert step_stop_ids(tok, ["\n"]) == [[2], [3], [4], [6], [8]]
    assert step_stop_ids(tok, ["."]) == [[3], [7]]
    # cached per tokenizer: a second call decodes nothing
    tok.batch_decode = None
    assert step_stop_ids(tok, ["\n"]) == [[2], [3], [4], [6], [8]]
    assert step_stop_ids(merged_tokenizer(), ["\n", "."]) == [[2], [3], [4], [6], [7], [8]]

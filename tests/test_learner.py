"""DPOLearner: exact step-0 numbers, learning, adapter isolation, NaN handling and batch semantics."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import on_each_device

import harness.training.learner as learner_mod
from harness.config.dpo import DPOConfig
from harness.errors import NonFiniteLoss
from harness.modeling.logprobs import completion_logps, sequence_sums
from harness.modeling.models import adapter_state
from harness.training.learner import DPOLearner, dpo_loss
from harness.training.pairs import Pair


def cfg(**kw) -> DPOConfig:
    base = {"lr": 1e-3, "batch_pairs": 1, "beta": 1.0}
    return DPOConfig(**(base | kw))


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def answer_pairs(tok) -> list[Pair]:
    return [
        Pair("answer", enc(tok, "What is 1+2? "), enc(tok, "3"), enc(tok, "1+2 is 4")),
        Pair("answer", enc(tok, "Ann has 7 apples and eats 2."), enc(tok, " 7 - 2 = 5"), enc(tok, " 9"), "answer:1"),
        Pair("answer", enc(tok, "x"), enc(tok, "The answer is: 12"), enc(tok, "The answer is: 21")),
    ]


def stop_pairs(tok) -> list[Pair]:
    yes, no = enc(tok, "Y"), enc(tok, "N")
    return [Pair("stop", enc(tok, "Q: 1+2?\nA: 3\nDone?"), yes, no, "stop:0"),
            Pair("stop", enc(tok, "Q: 1+2?\nA: 1+\nDone?"), no, yes, "stop:0")]


def margins_now(model, agent: str, pairs: list[Pair], pad_id: int, beta: float = 1.0) -> torch.Tensor:
    """beta * (policy log-ratio chosen - rejected) of the adapter in eval mode, reference = adapters disabled."""
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    model.eval()
    with torch.no_grad():
        with model.disable_adapter():
            ref = completion_logps(model, prompts, completions, pad_id)
        model.set_adapter(agent)
        policy = completion_logps(model, prompts, completions, pad_id)
    n = len(pairs)
    return dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta)[1]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bytes(a.numpy().tobytes()) == bytes(b.numpy().tobytes())


@pytest.fixture
def spy_margins(monkeypatch):
    """Records the per-pair margins of every dpo_loss call the learner makes."""
    seen: list[torch.Tensor] = []

    def spy(*args, **kwargs):
        loss, margin = dpo_loss(*args, **kwargs)
        seen.append(margin.detach().clone())
        return loss, margin

    monkeypatch.setattr(learner_mod, "dpo_loss", spy)
    return seen


@pytest.mark.parametrize("agent", ["answer", "stop"])
def test_step_zero_margins_are_exactly_zero_and_loss_is_log2(tiny_peft, spy_margins, agent):
    model, tok = tiny_peft()  # LoRA dropout 0.05 is active in the step: B = 0 still makes every delta exactly 0
    pairs = answer_pairs(tok) + stop_pairs(tok)
    n = sum(p.agent == agent for p in pairs)
    learner = DPOLearner(model, agent, cfg(batch_pairs=n), tok.pad_token_id, micro_batch_tokens=100)
    learner.add(pairs)
    stats = learner.step(seed=0)
    assert torch.cat(spy_margins).tolist() == [0.0] * n
    assert stats["margin"] == 0.0
    assert math.isclose(stats["loss"], math.log(2), rel_tol=1e-6)
    assert (stats["pairs"], stats["accuracy"]) == (n, 0.0)


def test_dpo_loss_formula():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5))
    loss, margin = dpo_loss(pc, pr, rc, rr, beta=0.5)
    expected_margin = 0.5 * ((-1.0 + 2.0) - (-3.0 + 2.5))
    assert math.isclose(margin.item(), expected_margin, rel_tol=1e-6)
    assert math.isclose(loss.item(), math.log1p(math.exp(-expected_margin)), rel_tol=1e-6)
    smooth, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.2)
    expected = 0.8 * math.log1p(math.exp(-expected_margin)) + 0.2 * math.log1p(math.exp(expected_margin))
    assert math.isclose(smooth.item(), expected, rel_tol=1e-6)


@on_each_device
def test_sequence_sums_add_in_the_order_of_a_cpu_index_add(device):
    """Bit for bit, on every device: DPO steps repeat their own bits (a resumed run equals one never stopped)."""
    gen = torch.Generator().manual_seed(0)
    lengths = [3, 0, 17, 1, 40]
    scale = 10.0 ** torch.randint(-4, 5, (sum(lengths),), generator=gen)  # magnitudes at which order shows
    values = torch.randn(sum(lengths), generator=gen) * scale
    index = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    want = torch.zeros(len(lengths)).index_add(0, index, values)
    assert torch.equal(sequence_sums(values.to(device), lengths).cpu(), want)
    pairwise = torch.stack([part.sum() for part in values.split(lengths)])
    assert not torch.equal(pairwise, want)  # another order gives other bits: the test can tell


def test_completion_logps_matches_token_by_token_sum(tiny_base):
    model, tok = tiny_base()
    prompts = [enc(tok, "What is 1+2?"), enc(tok, "x")]
    completions = [enc(tok, " 3"), enc(tok, "The answer is: 12")]
    got = completion_logps(model, prompts, completions, tok.pad_token_id)  # right-padded batch of two
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        manual = sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion))
        assert math.isclose(got[row].item(), manual, rel_tol=1e-5, abs_tol=1e-4)


def test_the_learner_learns_a_fixed_pair(tiny_peft):
    model, tok = tiny_peft()
    pair = answer_pairs(tok)[:1]
    learner = DPOLearner(model, "answer", cfg(lr=1e-2), tok.pad_token_id)
    assert margins_now(model, "answer", pair, tok.pad_token_id).tolist() == [0.0]
    losses = []
    for step in range(5):
        learner.add(pair)
        losses.append(learner.step(seed=step)["loss"])
    assert learner.steps == 5 and learner.queue == []
    assert margins_now(model, "answer", pair, tok.pad_token_id).item() > 0.5
    assert losses[-1] < losses[0]
    assert model.training is False  # the learner leaves the model in eval mode for generation


@pytest.mark.parametrize(("agent", "other"), [("answer", "stop"), ("stop", "answer")])
def test_only_the_named_adapter_changes(tiny_peft, agent, other):
    model, tok = tiny_peft()
    before = snapshot(model)
    other_before = adapter_state(model, other)
    learner = DPOLearner(model, agent, cfg(batch_pairs=2, lr=1e-2), tok.pad_token_id)
    for step in range(2):
        learner.add(answer_pairs(tok) + stop_pairs(tok))
        learner.step(seed=step)
    changed = {name for name, p in model.named_parameters() if not same_bits(p.detach(), before[name])}
    assert changed, "the step changed nothing"
    assert all(f".{agent}." in name and "lora_" in name for name in changed), sorted(changed)[:3]
    assert any("lora_B" in name for name in changed) and any("lora_A" in name for name in changed)
    after = adapter_state(model, other)
    assert after.keys() == other_before.keys()
    assert all(same_bits(after[k], other_before[k]) for k in after)


def nan_check(model, learner, pairs, before):
    learner.add(pairs)
    with pytest.raises(NonFiniteLoss, match="answer"):
        learner.step(seed=0)
    assert learner.steps == 0
    assert learner.optimizer.state_dict()["state"] == {}  # Adam never stepped
    assert all(p.grad is None for p in learner.params)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach().isnan(), before[name].isnan()), name
        assert torch.equal(p.detach().nan_to_num(), before[name].nan_to_num()), name
    assert model.training is False


def test_nan_loss_raises_and_does_not_step(tiny_peft, monkeypatch):
    model, tok = tiny_peft()
    learner = DPOLearner(model, "answer", cfg(batch_pairs=2), tok.pad_token_id, micro_batch_tokens=1)

    def nan_loss(*args, **kwargs):
        loss, margin = dpo_loss(*args, **kwargs)
        return loss * float("nan"), margin

    monkeypatch.setattr(learner_mod, "dpo_loss", nan_loss)
    nan_check(model, learner, answer_pairs(tok)[:2], snapshot(model))


def test_nan_parameter_raises_and_does_not_step(tiny_peft):
    model, tok = tiny_peft()
    learner = DPOLearner(model, "answer", cfg(batch_pairs=2), tok.pad_token_id)
    with torch.no_grad():
        learner.params[0].view(-1)[0] = float("nan")
    nan_check(model, learner, answer_pairs(tok)[:2], snapshot(model))


def test_nan_gradient_with_a_finite_loss_raises_and_does_not_step(tiny_peft, monkeypatch):
    """A finite loss can still give NaN/inf gradients (overflow in backward, e.g. in bf16): clip_grad_norm_
    then turns every gradient into NaN and Adam writes NaN into the adapter, which the next checkpoint keeps."""
    model, tok = tiny_peft()
    learner = DPOLearner(model, "answer", cfg(batch_pairs=2), tok.pad_token_id)
    real = learner_mod.dpo_loss

    def finite_loss_nan_grad(*args, **kwargs):
        loss, margin = real(*args, **kwargs)
        zero = margin - margin.detach()  # 0 in the forward pass, d/d(margin) = 1
        return loss + 0.0 * torch.sqrt(zero), margin  # forward: loss + 0; backward: 0 * inf = NaN

    monkeypatch.setattr(learner_mod, "dpo_loss", finite_loss_nan_grad)
    nan_check(model, learner, answer_pairs(tok)[:2], snapshot(model))


def test_pairs_queue_until_a_batch_is_full(tiny_peft, spy_margins):
    model, tok = tiny_peft()
    answers, stops = answer_pairs(tok), stop_pairs(tok)
    learner = DPOLearner(model, "answer", cfg(batch_pairs=2), tok.pad_token_id, micro_batch_tokens=1)
    learner.add(stops)  # pairs of the other agent are not queued
    assert learner.queue == [] and not learner.ready()
    learner.add(answers[:1] + stops[:1])
    assert learner.queue == answers[:1] and not learner.ready()
    learner.add(answers[1:])
    assert learner.queue == answers and learner.ready()
    stats = learner.step(seed=0)
    assert stats["pairs"] == 2
    assert learner.queue == answers[2:]  # the oldest two were taken
    assert [m.numel() for m in spy_margins] == [1, 1]  # micro-batches of one pair
    assert not learner.ready() and learner.steps == 1


def test_micro_batches_accumulate_to_the_same_step(tiny_peft, perturb):
    results = []
    for tokens in (1, 10_000):  # one pair per micro-batch, then all three in one
        model, tok = tiny_peft(dropout=0.0)
        perturb(model, "answer", seed=4, scale=0.1)
        learner = DPOLearner(model, "answer", cfg(batch_pairs=3), tok.pad_token_id, micro_batch_tokens=tokens)
        learner.add(answer_pairs(tok))
        stats = learner.step(seed=0)
        results.append((stats, adapter_state(model, "answer")))
    (s1, a1), (s3, a3) = results
    assert s1["margin"] != 0.0
    assert math.isclose(s1["loss"], s3["loss"], rel_tol=1e-5)
    assert math.isclose(s1["margin"], s3["margin"], rel_tol=1e-4, abs_tol=1e-6)
    # Adam's first step moves every weight by about lr (1e-3) whatever its gradient's scale, so float rounding of
    # differently shaped passes can move a near-zero-gradient weight by ~1e-5; a wrong accumulation moves it by ~lr
    for key in a1:
        torch.testing.assert_close(a1[key], a3[key], rtol=1e-4, atol=5e-5)


def test_state_dict_round_trip_continues_identically(tiny_peft):
    from harness.modeling.models import load_adapter_state

    def fresh():
        model, tok = tiny_peft()
        return model, tok, DPOLearner(model, "answer", cfg(batch_pairs=2, lr=1e-2), tok.pad_token_id)

    model_a, tok, learner_a = fresh()
    pairs = answer_pairs(tok)
    learner_a.add(pairs)
    learner_a.step(seed=0)
    buffer = io.BytesIO()
    torch.save({"learner": learner_a.state_dict(), "adapter": adapter_state(model_a, "answer")}, buffer)

    model_b, _, learner_b = fresh()
    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only, as the online stage loads it
    load_adapter_state(model_b, "answer", saved["adapter"])
    learner_b.load_state_dict(saved["learner"])
    assert learner_b.queue == learner_a.queue == pairs[2:] and learner_b.steps == 1

    for learner in (learner_a, learner_b):
        learner.add(pairs[:1])
        learner.step(seed=1)
    a, b = adapter_state(model_a, "answer"), adapter_state(model_b, "answer")
    assert all(same_bits(a[k], b[k]) for k in a)


def test_snapshot_reference_of_a_non_zero_adapter_starts_at_margin_zero(tiny_peft, perturb, spy_margins):
    """reference=snapshot: a frozen copy of the adapter as it was; for an adapter that already moves the model,
    step-0 margins are exactly 0 against the copy but not against the base model."""
    model, tok = tiny_peft(dropout=0.0)
    perturb(model, "answer", scale=0.2)
    pairs = answer_pairs(tok)
    learner = DPOLearner(model, "answer", cfg(batch_pairs=3, reference="snapshot"), tok.pad_token_id)
    assert "answer_ref" in model.peft_config
    assert torch.count_nonzero(margins_now(model, "answer", pairs, tok.pad_token_id)) > 0  # base reference
    learner.add(pairs)
    stats = learner.step(seed=0)
    assert torch.cat(spy_margins).tolist() == [0.0] * 3
    assert math.isclose(stats["loss"], math.log(2), rel_tol=1e-6)
    # the snapshot stays frozen while the adapter moves
    before = adapter_state(model, "answer_ref")
    learner.add(pairs)
    learner.step(seed=1)
    after = adapter_state(model, "answer_ref")
    assert all(same_bits(before[k], after[k]) for k in before)
    assert not all(same_bits(after[k], adapter_state(model, "answer")[k]) for k in after)


def test_snapshot_reference_refreshes_and_round_trips(tiny_peft):
    model, tok = tiny_peft(dropout=0.0)
    config = cfg(batch_pairs=1, reference="snapshot", reference_refresh_every=2)
    learner = DPOLearner(model, "answer", config, tok.pad_token_id)
    pairs = answer_pairs(tok)
    learner.add(pairs)
    learner.step(seed=0)  # step 1: no refresh yet
    ref, cur = adapter_state(model, "answer_ref"), adapter_state(model, "answer")
    assert not all(same_bits(ref[k], cur[k]) for k in ref)
    learner.step(seed=1)  # step 2: the snapshot becomes the adapter
    ref, cur = adapter_state(model, "answer_ref"), adapter_state(model, "answer")
    assert all(same_bits(ref[k], cur[k]) for k in ref)
    state = learner.state_dict()
    other_model, _ = tiny_peft(dropout=0.0)
    other = DPOLearner(other_model, "answer", config, tok.pad_token_id)
    other.load_state_dict(state)
    restored = adapter_state(other_model, "answer_ref")
    assert all(same_bits(restored[k], ref[k]) for k in ref)
    assert other_model.active_adapter == "answer"


@pytest.mark.parametrize("reference", ["base", "snapshot"])
def test_reference_is_fixed_while_training_uses_dropout(tiny_peft, perturb, reference):
    model, tok = tiny_peft(dropout=0.5)
    perturb(model, "answer", seed=5, scale=0.3)
    learner = DPOLearner(model, "answer", cfg(reference=reference), tok.pad_token_id)
    pairs = answer_pairs(tok)
    prompts, completions = [p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs]
    model.train()
    with torch.no_grad():
        with learner.reference():
            first = completion_logps(model, prompts, completions, tok.pad_token_id)
            second = completion_logps(model, prompts, completions, tok.pad_token_id)
        assert model.training  # restored after the reference pass
        noisy = [completion_logps(model, prompts, completions, tok.pad_token_id) for _ in range(2)]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(*noisy)  # the policy pass does use dropout: the check above is not vacuous


def test_micro_batches_are_bounded_by_padded_tokens():
    def pair(prompt: int, chosen: int, rejected: int) -> Pair:
        return Pair("answer", [1] * prompt, [2] * chosen, [3] * rejected)

    pairs = [pair(10, 5, 3), pair(4, 2, 2), pair(30, 1, 40), pair(1, 1, 1), pair(1, 2, 1)]
    # widths 15, 6, 70, 2, 3: a group costs 2 rows per pair x its longest width
    groups = learner_mod.micro_batches(pairs, max_tokens=60)
    assert [[pairs.index(p) for p in g] for g in groups] == [[0, 1], [2], [3, 4]]
    assert all(2 * len(g) * max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in g) <= 60
               for g in groups if len(g) > 1)
    assert [len(g) for g in learner_mod.micro_batches(pairs, max_tokens=1)] == [1] * 5  # too long: alone
    assert [len(g) for g in learner_mod.micro_batches(pairs, max_tokens=10**6)] == [5]


def test_completion_logps_equal_the_full_logits_computation(tiny_peft, perturb):
    """The head runs on completion positions only; the sums equal log-softmax over all positions."""
    model, tok = tiny_peft(dropout=0.0)
    perturb(model, "answer", seed=1, scale=0.1)
    model.set_adapter("answer")
    pairs = answer_pairs(tok) + stop_pairs(tok)
    prompts, completions = [p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs]
    with torch.no_grad():
        got = completion_logps(model, prompts, completions, tok.pad_token_id)
        want = []
        for prompt, completion in zip(prompts, completions):
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
            logps = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
            want.append(logps.gather(-1, torch.tensor(completion)[:, None]).sum())
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-5)


def test_per_question_updates_step_on_each_questions_pairs(tiny_peft, spy_margins):
    model, tok = tiny_peft()
    learner = DPOLearner(model, "answer", cfg(update="per_question", batch_pairs=2), tok.pad_token_id)
    assert not learner.ready()
    learner.add(answer_pairs(tok)[:1])
    assert learner.ready()  # one pair is enough: the question's pairs are learned right away
    assert learner.step(seed=0)["pairs"] == 1 and not learner.ready()
    learner.add(answer_pairs(tok))  # three pairs: steps of at most batch_pairs
    sizes = []
    while learner.ready():
        sizes.append(learner.step(seed=1)["pairs"])
    assert sizes == [2, 1] and learner.steps == 3


def test_gradient_checkpointing_recomputes_and_gives_the_same_step(tiny_peft, perturb):
    results = []
    for checkpointing in (False, True):
        model, tok = tiny_peft(dropout=0.0)
        perturb(model, "answer", seed=4, scale=0.1)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        calls: list[int] = []
        model.get_decoder().layers[0].self_attn.register_forward_hook(lambda *args, seen=calls: seen.append(1))
        learner = DPOLearner(model, "answer", cfg(batch_pairs=3), tok.pad_token_id)
        learner.add(answer_pairs(tok))
        results.append((learner.step(seed=0), adapter_state(model, "answer"), len(calls)))
    (plain, a, plain_calls), (ckpt, b, ckpt_calls) = results
    assert (plain_calls, ckpt_calls) == (2, 3)  # reference + policy; and the policy's layer again in backward
    assert plain["loss"] == pytest.approx(ckpt["loss"], rel=1e-6)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_due_after_says_whether_new_pairs_make_a_step_due(tiny_peft):
    model, tok = tiny_peft()
    pairs = answer_pairs(tok)
    per_question = DPOLearner(model, "answer", cfg(update="per_question", batch_pairs=2), tok.pad_token_id)
    assert per_question.due_after(pairs[:1]) and not per_question.due_after(stop_pairs(tok))
    accumulate = DPOLearner(model, "stop", cfg(batch_pairs=3), tok.pad_token_id)
    accumulate.add(stop_pairs(tok)[:1])
    assert not accumulate.due_after(stop_pairs(tok)[:1]) and accumulate.due_after(stop_pairs(tok))


def test_models_whose_logits_are_not_the_heads_output_are_refused(tiny_peft):
    model, tok = tiny_peft()
    model.config.final_logit_softcapping = 30.0  # Gemma-2 caps its logits after the head
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        DPOLearner(model, "answer", cfg(), tok.pad_token_id)


def test_a_pairs_own_label_smoothing_replaces_the_recipes(tiny_peft, monkeypatch):
    model, tok = tiny_peft()
    seen = []
    real = learner_mod.dpo_loss

    def spy(*args, **kwargs):
        seen.append(args[5].tolist())
        return real(*args, **kwargs)

    monkeypatch.setattr(learner_mod, "dpo_loss", spy)
    pairs = answer_pairs(tok)
    pairs[1].label_smoothing = 0.25  # MCTS-DPO's visit-count confidence rides on the pair
    learner = DPOLearner(model, "answer", cfg(batch_pairs=3, label_smoothing=0.1), tok.pad_token_id)
    learner.add(pairs)
    learner.step(seed=0)
    assert seen == [pytest.approx([0.1, 0.25, 0.1])]


def test_after_stream_waits_then_trains_epochs_over_every_pair(tiny_peft):
    model, tok = tiny_peft()
    pairs = answer_pairs(tok)
    learner = DPOLearner(model, "answer", cfg(update="after_stream", batch_pairs=2, lr=1e-2), tok.pad_token_id)
    learner.add(pairs)
    assert not learner.ready() and not learner.due_after(pairs)  # nothing steps during the stream
    steps = learner.train_epoch(seed=0)
    assert [s["pairs"] for s in steps] == [2, 1] and learner.steps == 2
    assert len(learner.queue) == 3  # kept for the next epoch
    assert margins_now(model, "answer", pairs, tok.pad_token_id).mean().item() > 0


def test_lr_zero_steps_without_moving_the_adapter(tiny_peft):
    model, tok = tiny_peft()
    before = adapter_state(model, "answer")
    learner = DPOLearner(model, "answer", cfg(batch_pairs=3, lr=0.0), tok.pad_token_id)
    learner.add(answer_pairs(tok))
    learner.step(seed=0)
    after = adapter_state(model, "answer")
    assert learner.steps == 1 and all(torch.equal(before[k], after[k]) for k in before)


def test_sequences_differing_only_in_their_last_token_share_one_forward_row(tiny_peft, perturb):
    """A Stop pair's chosen and rejected (one token each after the same prompt) are read off one row."""
    model, tok = tiny_peft(dropout=0.0)
    perturb(model, "stop", seed=2, scale=0.1)
    model.set_adapter("stop")
    pairs = stop_pairs(tok) + answer_pairs(tok)
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    shapes = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    with torch.no_grad():
        got = completion_logps(model, prompts, completions, tok.pad_token_id)
    hook.remove()
    stops = len(stop_pairs(tok))
    assert all(len(p.chosen_ids) == len(p.rejected_ids) == 1 for p in stop_pairs(tok))
    assert shapes[0][0] == len(prompts) - stops  # each Stop pair: one row for both of its completions
    with torch.no_grad():
        alone = torch.cat([completion_logps(model, [p], [c], tok.pad_token_id) for p, c in zip(prompts, completions)])
    torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)

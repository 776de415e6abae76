"""How the Flow engine schedules its work: the continuous schedule (rollouts start beside the main chains still
being written) gives the traces of the phased one (main chains, then rollouts), on a seed-scripted backend and on
the tiny model, in fewer, fuller calls; a Stop decision reads only what its question's earlier one did not."""

from __future__ import annotations

import pytest
from conftest import on_each_device
from test_flow import QUESTIONS, RecordingBackend, scripted_flow

from harness.generation.hf import HFBackend
from harness.generation.prompts import Prompter
from harness.strategies.flow_dpo.flow import Flow
from harness.strategies.flow_dpo.strategy import explore_continuous, make_pairs, rollouts_many

Q = "What is 3+4?"


def seeded(base):
    """A scripted backend whose k-th option is the one `seed % len(options)` picks, not the k-th call's: what a
    prompt gets depends on its seed only, as the real backends promise, so any schedule must give the same traces."""

    class Seeded(base):
        def generate(self, prompts, adapter, max_new_tokens, temperature, top_p=1.0, n=1, seed=0, stop=None):
            out = []
            for prompt, budget, s in zip(prompts, [max_new_tokens] * len(prompts)
                                         if isinstance(max_new_tokens, int) else max_new_tokens, seed):
                question, partial = self._answer_split(prompt)
                options = self.chunks[question][partial]
                self.counts[(adapter, question, partial)] = s % len(options)  # the base class reads the k-th
                out += super().generate([prompt], adapter, budget, temperature, top_p, n, s, stop)
            self.calls = getattr(self, "calls", []) + [len(prompts)]
            return out

    return Seeded


def phased(flow, mains, per_node=1, tries=4):
    flow.run(mains)
    return rollouts_many(flow, mains, per_node, tries)


def seen(mains, groups):
    """Everything a schedule decides: every trace's chunks, decisions and grade, and the pairs."""
    def trace(t):
        return (t.chunks, t.decisions, [None if p is None else round(p, 4) for p in t.stop_probs], t.end, t.correct,
                t.discarded_tokens)
    return [(trace(m), [(node, trace(alt)) for node, alt in g]) for m, g in zip(mains, groups)]


CHUNKS = {"": ["3+4", "3+5", "3+6", "4+3"], "3+4": ["=7", "=7!", "=70"], "3+5": ["=8", "=7"],
          "3+6": ["=9"], "4+3": ["=7", "=6"], "3+4=7": ["0", "!"], "3+4=70": ["!"], "3+5=8": ["!"],
          "3+4=7!": ["!"], "3+5=7": ["!"], "3+6=9": ["!"], "4+3=7": ["!"], "4+3=6": ["!"]}
STOP = {"3+4": 0.2, "3+5": 0.3, "3+6": 0.6, "4+3": 0.4, "3+4=7": 0.9, "3+4=7!": 0.7, "3+4=70": 0.2,
        "3+5=8": 0.8, "3+5=7": 0.1, "3+6=9": 0.9, "4+3=7": 0.3, "4+3=6": 0.9}


def in_flight(count):
    """The continuous schedule keeping at most `count` questions in flight."""
    return lambda flow, mains, per_node, tries: explore_continuous(flow, mains, per_node, tries, count)


@pytest.mark.parametrize(("per_node", "speculative"), [(1, False), (2, False), (1, True)])
def test_continuous_equals_phased_on_a_seed_scripted_backend(tiny_recipe, scripted_backend, per_node, speculative):
    results, calls = [], []
    for schedule in (phased, explore_continuous, in_flight(2)):
        flow, backend, _ = scripted_flow(tiny_recipe, seeded(scripted_backend), CHUNKS, STOP,
                                         "online.strategy.max_chunks=3", f"online.strategy.speculative={speculative}")
        mains = [flow.start(Q, "7", "gsm8k", seed) for seed in range(6)]
        groups = schedule(flow, mains, per_node, 4)
        results.append((seen(mains, groups), [make_pairs(flow, m, g) for m, g in zip(mains, groups)]))
        calls.append(backend.calls)
    assert results[0] == results[1] == results[2]
    assert any(results[0][1])  # the scenario makes pairs
    # the continuous schedule needs fewer generate calls and its calls are fuller on average
    assert len(calls[1]) < len(calls[0])
    assert sum(calls[1]) / len(calls[1]) > sum(calls[0]) / len(calls[0])
    assert len(calls[1]) < len(calls[2])  # two in flight take more, smaller calls than all six at once


def test_a_question_enters_as_soon_as_one_in_flight_is_finished(tiny_recipe, scripted_backend):
    """With one question in flight, each question's first chunk is written in the call after the previous question
    has its main chain and every rollout finished: never beside them, never later."""
    flow, backend, _ = scripted_flow(tiny_recipe, seeded(scripted_backend), CHUNKS, STOP,
                                     "online.strategy.max_chunks=3")
    mains = [flow.start(Q, "7", "gsm8k", seed) for seed in range(4)]
    steps, step = [], flow.step
    flow.step = lambda traces, join=None: steps.append({id(t) for t in traces}) or step(traces, join)
    groups = explore_continuous(flow, mains, 1, 4, in_flight=1)
    spans = []
    for main, group in zip(mains, groups):
        own = {id(main)} | {id(alt) for _, alt in group}
        rounds = [k for k, ids in enumerate(steps) if ids & own]
        assert all(steps[k] <= own for k in rounds)  # alone in its rounds
        spans.append((rounds[0], rounds[-1]))
    assert all(later[0] == earlier[1] + 1 for earlier, later in zip(spans, spans[1:]))  # the round after


@on_each_device
def test_continuous_equals_phased_on_the_tiny_model(tiny_recipe, tiny_peft, perturb, device):
    recipe = tiny_recipe("online.strategy.chunk_size=6", "online.strategy.max_chunks=3")
    model, tok = tiny_peft(device=device)
    perturb(model, "answer", seed=3, scale=0.1)
    perturb(model, "stop", seed=4, scale=0.3)
    prompter = Prompter(tok, recipe.strategy.answer_prompt, recipe.model.chat_template)
    results, rows = [], []
    for schedule in (phased, explore_continuous, in_flight(3)):
        backend = RecordingBackend(HFBackend(model, tok))
        flow = Flow(backend, prompter, recipe.strategy)
        mains = [flow.start(q, gold, "gsm8k", 10 + k) for k, (q, gold) in enumerate(QUESTIONS * 2)]
        groups = schedule(flow, mains, 1, 4)
        results.append(seen(mains, groups))
        rows.append(len(backend.generated))
        assert sum(len(g) for g in groups) > len(mains)  # rollouts at several nodes per question
    assert results[0] == results[1] == results[2]
    assert rows[0] == rows[1] == rows[2]  # the same chunks drawn, in other calls


class StopReads:
    """Wraps the HF backend and records, for every Stop prompt read, how many of its tokens were encoded."""

    def __init__(self, inner) -> None:
        self.inner, self.eos_token_ids = inner, inner.eos_token_ids
        self.reads: list[tuple[int, int]] = []

    def generate(self, *args, **kwargs):
        return self.inner.generate(*args, **kwargs)

    def next_token_logprobs(self, prompts, adapter, token_ids):
        before = self.inner.prefill_tokens - self.inner.cached_tokens
        rows = self.inner.next_token_logprobs(prompts, adapter, token_ids)
        self.reads.append((len(prompts[0]), self.inner.prefill_tokens - self.inner.cached_tokens - before))
        return rows

    def reset_cache(self, adapter):
        self.inner.reset_cache(adapter)


def test_a_stop_decision_encodes_only_the_new_chunk_and_the_suffix(tiny_recipe, tiny_peft):
    """The Stop prompt's prefix (system, question, the partial answer already judged) is encoded once per question:
    each later decision reads only the chunk written since and the prompt's suffix."""
    recipe = tiny_recipe("online.strategy.chunk_size=6", "online.strategy.max_chunks=4",
                         "online.strategy.stop_threshold=0.999999", "online.strategy.eos_ends_flow=false")
    model, tok = tiny_peft()
    prompter = Prompter(tok, recipe.strategy.answer_prompt, recipe.model.chat_template)
    backend = StopReads(HFBackend(model, tok))
    flow = Flow(backend, prompter, recipe.strategy)
    (trace,) = flow.run([flow.start(QUESTIONS[0][0], QUESTIONS[0][1], "gsm8k", 5)])
    assert trace.decisions == [False, False, False]
    marked = prompter.spliced(recipe.strategy.stop_prompt, [-1], question=trace.question)
    suffix = len(marked) - marked.index(-1) - 1  # the template's tokens after the partial answer
    (first_len, first), *later = backend.reads
    assert first == first_len  # the first decision reads its whole prompt
    for chunk, (length, encoded) in zip(trace.chunks[1:], later):
        assert encoded == len(chunk) + suffix < length


def test_a_rollout_draws_beside_the_chunk_it_must_differ_from(tiny_recipe, scripted_backend):
    """An answer node's rollout draws its first chunk in the same call as the main chain's chunk there, and a draw
    that repeats that chunk is redrawn, as in the phased order."""
    flow, backend, _ = scripted_flow(tiny_recipe, seeded(scripted_backend), CHUNKS, STOP,
                                     "online.strategy.max_chunks=3")
    mains = [flow.start(Q, "7", "gsm8k", seed) for seed in range(12)]
    groups = explore_continuous(flow, mains, 1, 4)
    assert backend.calls[0] == 2 * len(mains)  # every main chain's first chunk and its rollout's first draw
    first = [alt for group in groups for node, alt in group if node == ("answer", 0)]
    assert any(alt.discarded_tokens for alt in first)  # some first draw repeated the main chain's chunk
    assert all(alt.chunks[0] != main.chunks[0] for main, alt in zip(mains, first))
    phased_flow, _, _ = scripted_flow(tiny_recipe, seeded(scripted_backend), CHUNKS, STOP,
                                      "online.strategy.max_chunks=3")
    phased_mains = [phased_flow.start(Q, "7", "gsm8k", seed) for seed in range(12)]
    assert seen(mains, groups) == seen(phased_mains, phased(phased_flow, phased_mains))

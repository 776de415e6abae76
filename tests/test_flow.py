"""The Flow (chunked Answer/Stop production) and Flow-DPO's rollouts and pairs.

Part one runs the real tiny model through HFBackend; part two uses a scripted backend whose outputs and
correctness are fixed, so that the exact pairs `rollouts` + `make_pairs` must give are known.
"""

from __future__ import annotations

import pytest

from harness.generation.backend import sigmoid
from harness.generation.hf import HFBackend
from harness.generation.prompts import Prompter
from harness.modeling.families import family_tokenizer
from harness.strategies.flow_dpo.flow import Flow
from harness.strategies.flow_dpo.strategy import make_pairs, nodes, rollouts
from harness.training.pairs import Pair

QUESTIONS = [
    ("Hana has 1 apples and gets 2 more. How many apples does Hana have now?", "3"),
    ("Fay has 9 stamps and gives away 3. How many stamps are left?", "6"),
    ("What is 2+2?", "4"),
    ("Ben has 1 coins and gets 1 more. How many coins does Ben have now?", "2"),
]


class RecordingBackend:
    """Wraps a backend and records every call and its answer."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.eos_token_ids = inner.eos_token_ids
        self.generated: list[tuple[list[int], list[int], bool]] = []
        self.asked: list[tuple[list[int], float]] = []
        self.adapters: list[tuple[str, str | None]] = []

    def generate(self, prompts, adapter, max_new_tokens, temperature, top_p=1.0, n=1, seed=0):
        out = self.inner.generate(prompts, adapter, max_new_tokens, temperature, top_p, n, seed)
        self.adapters.append(("generate", adapter))
        for prompt, row in zip(prompts, out):
            self.generated.append((list(prompt), list(row[0].token_ids), row[0].finished))
        return out

    def next_token_logprobs(self, prompts, adapter, token_ids):
        rows = self.inner.next_token_logprobs(prompts, adapter, token_ids)
        self.adapters.append(("stop", adapter))
        self.asked += [(list(p), sigmoid(yes - no)) for p, (yes, no) in zip(prompts, rows)]  # the yes_vs_no rule
        return rows

    def reset_cache(self, adapter):
        self.inner.reset_cache(adapter)

    def adapters_updated(self, names):
        self.inner.adapters_updated(names)


def real_flow(tiny_recipe, tiny_peft, perturb, *overrides):
    recipe = tiny_recipe("online.strategy.chunk_size=6", "online.strategy.max_chunks=3", *overrides)
    model, tok = tiny_peft()
    perturb(model, "answer", seed=3, scale=0.1)
    backend = RecordingBackend(HFBackend(model, tok))
    prompter = Prompter(tok, recipe.strategy.answer_prompt, recipe.model.chat_template)
    return Flow(backend, prompter, recipe.strategy), backend, tok


def start_all(flow, times: int = 1, seed: int = 0):
    """The questions `times` over, each trace with its own seed (seed, seed + 1, ...)."""
    return [flow.start(q, gold, "gsm8k", seed + k) for k, (q, gold) in enumerate(QUESTIONS * times)]


# ---------------------------------------------------------------- real tiny model


def test_trace_text_is_concatenated_chunks_and_chunk_ids_are_the_generated_ids(tiny_recipe, tiny_peft, perturb):
    flow, backend, tok = real_flow(tiny_recipe, tiny_peft, perturb)
    traces = flow.run(start_all(flow, seed=11))
    generated = {(tuple(p), tuple(ids)) for p, ids, _ in backend.generated}
    asked = {tuple(p): prob for p, prob in backend.asked}
    for (question, _), trace in zip(QUESTIONS, traces):
        chat = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True)
        assert trace.prompt_ids == tok.encode(chat, add_special_tokens=False)
        assert trace.chunks and all(0 < len(c) <= 6 for c in trace.chunks)
        assert trace.answer_ids == [t for c in trace.chunks for t in c]
        assert trace.text == "".join(trace.chunk_texts)
        assert trace.chunk_texts == [tok.decode(c, skip_special_tokens=True) for c in trace.chunks]
        assert trace.text == tok.decode(trace.answer_ids, skip_special_tokens=True)
        for i in range(len(trace.chunks)):
            # chunk i is exactly what the backend wrote (never decoded + re-encoded): a generate call on the ids
            # of chunks < j, for some j <= i, returned chunks j..i as the start of its output (in speculative
            # mode one call drafts several chunks)
            found = False
            for j in range(i + 1):
                prefix = tuple(trace.prompt_ids + [t for c in trace.chunks[:j] for t in c])
                written = tuple(t for c in trace.chunks[j : i + 1] for t in c)
                found |= any(p == prefix and ids[: len(written)] == written for p, ids in generated)
            assert found, f"chunk {i} is not what the backend generated"
        for i, prob in enumerate(trace.stop_probs):
            stop_prompt = flow.stop_prompt(question, [t for c in trace.chunks[: i + 1] for t in c])
            assert asked[tuple(stop_prompt)] == prob
            assert trace.decisions[i] == (prob > flow.cfg.stop_threshold)
    assert {a for kind, a in backend.adapters if kind == "generate"} == {"answer"}
    assert {a for kind, a in backend.adapters if kind == "stop"} == {"stop"}
    assert flow.stats.tokens == sum(len(ids) for _, ids, _ in backend.generated)
    assert flow.stats.stop_calls == len(backend.asked)


def test_stop_prompt_splices_answer_ids_into_the_rendered_template(tiny_recipe):
    recipe = tiny_recipe()
    tok = family_tokenizer("chatml")
    flow = Flow(None, Prompter(tok, recipe.strategy.answer_prompt, True), recipe.strategy)
    answer = "3 + 4 = 7"
    user = recipe.strategy.stop_prompt.user.format(question="What?", partial_answer=answer)
    assert answer in user
    text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    assert flow.stop_prompt("What?", tok.encode(answer, add_special_tokens=False)) == tok.encode(
        text, add_special_tokens=False)
    assert (flow.yes_id, flow.no_id) == (tok.convert_tokens_to_ids("Y"), tok.convert_tokens_to_ids("N"))


def test_same_seed_same_traces_other_seed_other_traces(tiny_recipe, tiny_peft, perturb):
    flow, _, _ = real_flow(tiny_recipe, tiny_peft, perturb)
    first = [t.to_dict() for t in flow.run(start_all(flow, seed=5))]
    assert [t.to_dict() for t in flow.run(start_all(flow, seed=5))] == first
    assert [t.to_dict() for t in flow.run(start_all(flow, seed=6))] != first


def test_stop_never_yes_runs_to_max_chunks(tiny_recipe, tiny_peft, perturb):
    flow, backend, tok = real_flow(tiny_recipe, tiny_peft, perturb, "online.strategy.stop_threshold=0.999999")
    traces = flow.run(start_all(flow, 2, seed=1))
    eos = tok.eos_token_id
    assert any(t.end == "max_chunks" for t in traces)
    for t in traces:
        assert 1 <= len(t.chunks) <= 3
        assert t.end in ("max_chunks", "eos")
        if t.end == "max_chunks":
            assert len(t.chunks) == 3
            assert len(t.decisions) == len(t.stop_probs) == 2  # no Stop decision after the last chunk
            assert eos not in t.chunks[-1]
        else:
            assert t.chunks[-1][-1] == eos
            assert len(t.decisions) == len(t.chunks) - 1
        assert t.decisions == [False] * len(t.decisions)
        assert all(eos not in c for c in t.chunks[:-1])
    assert len(backend.asked) == sum(len(t.decisions) for t in traces)


def test_stop_always_yes_gives_one_chunk(tiny_recipe, tiny_peft, perturb):
    flow, backend, tok = real_flow(tiny_recipe, tiny_peft, perturb, "online.strategy.stop_threshold=0.000001",
                                   "online.strategy.speculative=false")
    traces = flow.run(start_all(flow, 2, seed=1))
    for t in traces:
        assert len(t.chunks) == 1
        if t.chunks[0][-1] == tok.eos_token_id:
            assert (t.end, t.decisions) == ("eos", [])
        else:
            assert (t.end, t.decisions) == ("stop", [True])
            assert len(t.chunks[0]) == 6
    assert any(t.end == "stop" for t in traces), "settings must make Stop end some traces"
    assert len(backend.asked) == sum(t.end == "stop" for t in traces)


def test_speculative_drafts_equal_chunk_by_chunk_generation_when_greedy(tiny_recipe, tiny_peft, perturb):
    """Drafting the whole budget and cutting it into chunks is the same Flow: greedy traces are identical, and
    the draft's tokens after a Stop yes are counted as discarded."""
    overrides = ("online.strategy.temperature=0", "online.strategy.max_chunks=3", "online.strategy.stop_threshold=0.5")
    chunked, _, _ = real_flow(tiny_recipe, tiny_peft, perturb, *overrides, "online.strategy.speculative=false")
    drafted, _, _ = real_flow(tiny_recipe, tiny_peft, perturb, *overrides, "online.strategy.speculative=true")
    a = chunked.run(start_all(chunked, seed=3))
    b = drafted.run(start_all(drafted, seed=3))
    assert [(t.chunks, t.decisions, t.end, t.stop_probs) for t in a] == \
        [(t.chunks, t.decisions, t.end, t.stop_probs) for t in b]
    assert {t.end for t in a} >= {"stop"}, "settings must make Stop end some traces"
    assert sum(t.discarded_tokens for t in a) == 0
    assert drafted.stats.tokens == sum(len(t.answer_ids) + t.discarded_tokens for t in b)
    assert any(t.discarded_tokens for t in b if t.end == "stop")


# ---------------------------------------------------------------- scripted backend

Q = "What is 3+4?"


def scripted_flow(tiny_recipe, backend_cls, chunks, stop, *overrides, question=Q):
    # stop_threshold 0.5: the scripts' P(Yes) cut
    recipe = tiny_recipe("online.strategy.chunk_size=64", "online.strategy.stop_threshold=0.5", *overrides)
    tok = family_tokenizer("chatml")
    prompter = Prompter(tok, recipe.strategy.answer_prompt, recipe.model.chat_template)
    backend = backend_cls(tok, prompter, {question: chunks}, {question: stop}, recipe.strategy)
    return Flow(backend, prompter, recipe.strategy), backend, tok


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_a_question_without_an_answer_is_graded_wrong(tiny_recipe, scripted_backend):
    chunks = {"": ["I do not know<EOS>"]}
    flow, backend, _ = scripted_flow(tiny_recipe, scripted_backend, chunks, {})
    (trace,) = flow.run([flow.start(Q, "7", "gsm8k", 0)])
    assert (trace.text, trace.extracted, trace.correct, trace.end) == ("I do not know", None, False, "eos")
    assert backend.stop_calls == []  # an EOS chunk ends the Flow without asking Stop

    branches = rollouts(flow, trace, per_node=1, tries=2)
    assert [node for node, _ in branches] == [("answer", 0)]
    assert make_pairs(flow, trace, branches) == []  # both wrong: no pair, no crash


def test_eos_ends_flow_false_asks_stop_after_an_eos_chunk(tiny_recipe, scripted_backend):
    chunks = {"": ["3+4<EOS>"], "3+4<|im_end|>": ["=7"]}
    stop = {"3+4<|im_end|>": 0.1}
    flow, backend, tok = scripted_flow(tiny_recipe, scripted_backend, chunks, stop,
                                       "online.strategy.eos_ends_flow=false",
                                       "online.strategy.max_chunks=2")
    (trace,) = flow.run([flow.start(Q, "7", "gsm8k", 0)])
    assert trace.chunks == [ids(tok, "3+4") + [tok.eos_token_id], ids(tok, "=7")]
    assert (trace.end, trace.decisions, trace.text, trace.correct) == ("max_chunks", [False], "3+4=7", True)
    assert backend.stop_calls == [("stop", Q, "3+4<|im_end|>")]


def scenario_one(tiny_recipe, scripted_backend):
    """Main chain 3+4 | No | =7 | Yes -> correct. Rollouts: answer 0 -> 3+5 .. =8 wrong; stop 0 -> Yes: "3+4"
    wrong; answer 1 -> =7! correct (agrees: no pair); stop 1 -> No, then chunk 0: "3+4=70" wrong."""
    chunks = {"": ["3+4", "3+5"], "3+4": ["=7", "=7!"], "3+5": ["=8"], "3+4=7": ["0"]}
    stop = {"3+4": 0.2, "3+5": 0.2, "3+4=7": 0.9, "3+5=8": 0.9, "3+4=7!": 0.9}
    return scripted_flow(tiny_recipe, scripted_backend, chunks, stop, "online.strategy.max_chunks=3")


def test_rollouts_and_pairs_are_exactly_the_expected_ones(tiny_recipe, scripted_backend):
    flow, backend, tok = scenario_one(tiny_recipe, scripted_backend)
    (main,) = flow.run([flow.start(Q, "7", "gsm8k", 0)])
    assert main.chunks == [ids(tok, "3+4"), ids(tok, "=7")]
    assert main.stop_probs == pytest.approx([0.2, 0.9]) and (main.decisions, main.end) == ([False, True], "stop")
    assert (main.text, main.extracted, main.correct) == ("3+4=7", "7", True)
    assert nodes(main) == [("answer", 0), ("stop", 0), ("answer", 1), ("stop", 1)]

    branches = rollouts(flow, main, per_node=1, tries=4)
    alts = {node: alt for node, alt in branches}
    assert [node for node, _ in branches] == nodes(main)
    assert (alts["answer", 0].text, alts["answer", 0].decisions, alts["answer", 0].correct) == (
        "3+5=8", [False, True], False)
    assert (alts["stop", 0].text, alts["stop", 0].decisions, alts["stop", 0].end) == ("3+4", [True], "stop")
    assert alts["stop", 0].stop_probs == [None]  # a forced decision, not asked
    assert (alts["answer", 1].text, alts["answer", 1].correct) == ("3+4=7!", True)
    assert (alts["stop", 1].text, alts["stop", 1].decisions, alts["stop", 1].end) == (
        "3+4=70", [False, False], "max_chunks")
    # the forced decisions were not asked of the Stop LLM: only main (2) + answer-0 rollout (2) + answer-1 (1)
    assert len(backend.stop_calls) == 5

    prompter = flow.prompter
    answer_prompt = prompter.answer_prompt(Q)
    yes, no = [flow.yes_id], [flow.no_id]
    expected = [
        Pair("answer", answer_prompt, ids(tok, "3+4"), ids(tok, "3+5"), "answer:0"),
        Pair("stop", flow.stop_prompt(Q, ids(tok, "3+4")), no, yes, "stop:0"),
        Pair("stop", flow.stop_prompt(Q, ids(tok, "3+4=7")), yes, no, "stop:1"),
    ]
    assert make_pairs(flow, main, branches) == expected
    assert yes == ids(tok, "Y") and no == ids(tok, "N")


def test_pairs_when_the_main_chain_is_wrong(tiny_recipe, scripted_backend):
    """Chosen is always the output on the path that ended correct, here the rollout's."""
    chunks = {"": ["3+5", "3+4"], "3+5": ["=8"], "3+4": ["=7"], "3+5=8": ["!"]}
    stop = {"3+5": 0.2, "3+4": 0.2, "3+5=8": 0.7, "3+4=7": 0.7}
    flow, _, tok = scripted_flow(tiny_recipe, scripted_backend, chunks, stop, "online.strategy.max_chunks=3")
    (main,) = flow.run([flow.start(Q, "7", "gsm8k", 0)])
    assert (main.text, main.correct) == ("3+5=8", False)
    pairs = make_pairs(flow, main, rollouts(flow, main, per_node=1, tries=4))
    prompter = flow.prompter
    # answer 0: 3+4 .. =7 correct -> chosen; stop 0 (forced Yes: "3+5") wrong; answer 1 resample "=8" equals the
    # original after every try and stays wrong; stop 1 (forced No: "3+5=8!") wrong.
    assert pairs == [Pair("answer", prompter.answer_prompt(Q), ids(tok, "3+4"), ids(tok, "3+5"), "answer:0")]


def test_no_pair_when_the_resampled_chunk_equals_the_original(tiny_recipe, scripted_backend):
    chunks = {"": ["3+4"], "3+4": ["=7", "=9"]}  # the first chunk is always the same
    stop = {"3+4": 0.1}
    flow, backend, tok = scripted_flow(tiny_recipe, scripted_backend, chunks, stop, "online.strategy.max_chunks=2")
    (main,) = flow.run([flow.start(Q, "7", "gsm8k", 0)])
    assert (main.text, main.correct, main.end) == ("3+4=7", True, "max_chunks")

    branches = rollouts(flow, main, per_node=1, tries=3)
    alts = dict(branches)
    # answer 0: three draws, all equal to the original; the rollout keeps it and goes on to a wrong end
    assert sum(1 for a, _, p, _ in backend.generate_calls if a == "answer" and p == "") == 1 + 3
    assert alts["answer", 0].chunks[0] == main.chunks[0]
    assert (alts["answer", 0].text, alts["answer", 0].correct) == ("3+4=9", False)
    prompter = flow.prompter
    assert make_pairs(flow, main, branches) == [
        Pair("stop", flow.stop_prompt(Q, ids(tok, "3+4")), [flow.no_id], [flow.yes_id], "stop:0"),
        Pair("answer", prompter.answer_prompt(Q) + ids(tok, "3+4"), ids(tok, "=7"), ids(tok, "=9"), "answer:1"),
    ]


def test_resampling_takes_the_first_differing_chunk_drawing_the_other_tries_in_one_round(tiny_recipe,
                                                                                         scripted_backend):
    chunks = {"": ["3+4", "3+4", "3+5", "3+6"], "3+4": ["=7"], "3+5": ["=8"]}
    stop = {"3+4": 0.1, "3+5": 0.1}
    flow, backend, tok = scripted_flow(tiny_recipe, scripted_backend, chunks, stop, "online.strategy.max_chunks=2")
    (main,) = flow.run([flow.start(Q, "7", "gsm8k", 0)])
    branches = rollouts(flow, main, per_node=1, tries=4)
    alt = dict(branches)["answer", 0]
    assert alt.chunks[0] == ids(tok, "3+5")
    # main chain, the rollout's first draw (a repeat), then its 3 remaining tries together
    assert [t for a, _, p, t in backend.generate_calls if p == ""] == ["3+4", "3+4", "3+5", "3+6", "3+6"]
    assert alt.discarded_tokens == len(ids(tok, "3+4")) + len(ids(tok, "3+6")) * 2


@pytest.mark.parametrize("per_node", [1, 2])
def test_rollouts_per_node(tiny_recipe, scripted_backend, per_node):
    flow, _, _ = scenario_one(tiny_recipe, scripted_backend)
    (main,) = flow.run([flow.start(Q, "7", "gsm8k", 0)])
    branches = rollouts(flow, main, per_node=per_node, tries=4)
    assert [node for node, _ in branches] == [node for node in nodes(main) for _ in range(per_node)]
    assert all(alt.done for _, alt in branches)

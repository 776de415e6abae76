"""Step-Controlled DPO: temperature schedules, step splitting on token ids, the pairs of a scripted backend (one
call per round for the whole group), determinism, a question's pairs not depending on its group, the loss covering
only the steps after the cut, and the recipes' strategy blocks."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from scripted import EOS, scripted_ids, split_answer_prompt

from harness.config.dpo import DPOConfig
from harness.config.section import PromptTemplate
from harness.data.records import Record
from harness.generation.backend import Sample, StopSequences, prompt_seeds, token_budgets
from harness.generation.prompts import Prompter
from harness.modeling.families import family_tokenizer
from harness.run.seeds import seed_for
from harness.strategies.base import Solution
from harness.strategies.step_controlled.config import StepControlledConfig
from harness.strategies.step_controlled.strategy import StepControlled, split_steps, step_temperature
from harness.training.learner import completion_logps, dpo_loss

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.parametrize(("schedule", "expected"), [
    ("paper", [1.1, 1.15, 1.2, 1.25, 1.3, 1.35, 1.4, 1.4, 1.4]),
    ("code", [1.1, 1.2, 1.3, 1.4, 1.4, 1.4, 1.4, 1.4, 1.4]),
])
def test_step_temperatures_rise_per_new_step_to_the_cap(schedule, expected):
    assert [step_temperature(schedule, n) for n in range(len(expected))] == expected


def test_steps_split_on_token_ids_and_a_trailing_eos_joins_the_last_step():
    ends, eos = {10}, {2}
    ids = [5, 6, 10, 7, 10, 8, 9, 2]
    assert split_steps(ids, ends, eos) == [[5, 6, 10], [7, 10], [8, 9, 2]]
    assert split_steps([5, 10, 7, 10, 2], ends, eos) == [[5, 10], [7, 10, 2]]  # no step of EOS alone
    assert split_steps([5, 10, 7], ends, eos) == [[5, 10], [7]]
    assert split_steps([5, 6], ends, eos) == [[5, 6]]


class ScriptedSteps:
    """A fake backend. A call without `stop` (the samples) gives question q's prompts the whole answers
    `answers[q]` in order; a call with `stop` gives the next entry of `steps[(q, partial answer)]` (the k-th call
    for the same partial answer gets the k-th entry), cut right after its first stop id. With `by_seed`, a prompt
    gets the entry its seed draws instead (a pure function of prompt and seed, as the real backends). Text ending
    in `<EOS>` ends with the EOS id. Every call is recorded, with each prompt's seed."""

    def __init__(self, tokenizer, prompter, answers: dict[str, list[str]], steps: dict[tuple[str, str], list[str]],
                 by_seed: bool = False):
        self.tok, self.prompter, self.answers, self.steps, self.by_seed = tokenizer, prompter, answers, steps, by_seed
        self.eos_token_ids = [tokenizer.eos_token_id]
        self.counts: dict[tuple, int] = {}
        self.calls: list[dict] = []
        self.resets: list[str | None] = []

    def ids(self, text: str) -> list[int]:
        return scripted_ids(self.tok, text, self.eos_token_ids)

    def _split(self, prompt: list[int]) -> tuple[str, str]:
        return split_answer_prompt(self.tok, self.prompter, self.answers, prompt)

    def _next(self, key: tuple, options: list[str]) -> str:
        k = self.counts.get(key, 0)
        self.counts[key] = k + 1
        return options[min(k, len(options) - 1)]

    def generate(self, prompts, adapter, max_new_tokens, temperature, top_p=1.0, n=1, seed=0, stop=None):
        budgets = token_budgets(max_new_tokens, len(prompts))
        temperatures = [temperature] * len(prompts) if isinstance(temperature, float) else list(temperature)
        stops = StopSequences(stop)
        seeds = prompt_seeds(seed, len(prompts), n)
        call = {"adapter": adapter, "seeds": seeds, "stop": stop is not None, "budgets": budgets,
                "temperatures": temperatures, "questions": [], "partials": []}
        out = []
        for prompt, budget, own_seed in zip(prompts, budgets, seeds):
            question, partial = self._split(prompt)
            call["questions"].append(question)
            call["partials"].append(partial)
            key = (question, "samples") if stop is None else (question, partial)
            options = self.answers[question] if stop is None else self.steps[key]
            text = random.Random(own_seed).choice(options) if self.by_seed else self._next(key, options)
            ids = self.ids(text)[:budget]
            end = stops.first_end(ids)
            ids = ids[:end] if end else ids
            out.append([Sample(ids, [-1.0] * len(ids), finished=ids[-1] in self.eos_token_ids,
                               stopped=end is not None)])
        self.calls.append(call)
        return out

    def reset_cache(self, adapter):
        self.resets.append(adapter)


ANN = "Ann has 2 apples and gets 3 more. How many apples?"
BO = "Bo has 4 pens and loses 1. How many pens?"
RECORDS = [Record(id="a", question=ANN, answer="5", solution=None, task="gsm8k"),
           Record(id="b", question=BO, answer="3", solution=None, task="gsm8k")]
ANSWERS = {
    ANN: ["2 + 3 = 6\n#### 6" + EOS,  # wrong
          "I apologize\n2 + 3 = 5\n#### 5" + EOS,  # correct, but a filter word: never chosen nor cut
          "2 + 3 = 5\nSo 5 apples.\n#### 5" + EOS],
    BO: ["4 - 1 = 3\n#### 3" + EOS] * 3,  # all correct: no naive pair
}
STEPS = {
    (ANN, "2 + 3 = 5\n"): ["Add them.\n", "Oops 2 + 3 = 7.\n"],  # try 0 goes on right, try 1 goes wrong
    (ANN, "2 + 3 = 5\nAdd them.\n"): ["#### 5" + EOS],
    (ANN, "2 + 3 = 5\nOops 2 + 3 = 7.\n"): ["#### 7" + EOS],
    (ANN, "2 + 3 = 5\nSo 5 apples.\n"): ["#### 8" + EOS],
    (BO, "4 - 1 = 3\n"): ["#### 3" + EOS, "#### 2" + EOS],
}


def scripted(answers=ANSWERS, steps=STEPS, by_seed=False, **cfg):
    tok = family_tokenizer("chatml")
    template = PromptTemplate(user="{question}")
    prompter = Prompter(tok, template, chat_template=True)
    backend = ScriptedSteps(tok, prompter, answers, steps, by_seed)
    fields = {"answer_prompt": template, "samples": 3, "temperature": 1.0, "max_new_tokens": 60,
              "cut": "every", "negatives_per_question": 2, "max_tries": 2} | cfg
    strategy = StepControlled(StepControlledConfig(**fields),
                              SimpleNamespace(backend=backend, prompter=prompter, tokenizer=tok, model=None))
    return strategy, backend


def solved(strategy, records=RECORDS, seeds=None) -> list[Solution]:
    """The records as solved questions (record i with seed `seeds[i]`, default i); play uses only record and seed."""
    seeds = range(len(records)) if seeds is None else seeds
    return [Solution(record=r, prompt_ids=strategy.prompter.answer_prompt(r.question), answer_ids=[], text="",
                     extracted=None, correct=False, tokens=0, seed=seed) for r, seed in zip(records, seeds)]


def test_pairs_of_a_scripted_group():
    strategy, backend = scripted()
    ids, prompt = backend.ids, strategy.prompter.answer_prompt
    ann, bo = strategy.play(solved(strategy))

    assert [(p.agent, p.node) for p in ann.pairs] == [("policy", "naive"), ("policy", "step:0"), ("policy", "step:1")]
    naive, step0, step1 = ann.pairs
    assert naive.prompt_ids == prompt(ANN)
    assert naive.chosen_ids == ids(ANSWERS[ANN][2]) and naive.rejected_ids == ids(ANSWERS[ANN][0])
    # The prompt holds the correct answer's first steps as its own ids; chosen is the rest of that answer.
    assert step0.prompt_ids == prompt(ANN) + ids("2 + 3 = 5\n")
    assert step0.chosen_ids == ids("So 5 apples.\n#### 5" + EOS)
    assert step0.rejected_ids == ids("Oops 2 + 3 = 7.\n#### 7" + EOS)  # the second try; the first ended correct
    assert step1.prompt_ids == prompt(ANN) + ids("2 + 3 = 5\nSo 5 apples.\n")
    assert (step1.chosen_ids, step1.rejected_ids) == (ids("#### 5" + EOS), ids("#### 8" + EOS))
    assert step1.prompt_ids + step1.chosen_ids == prompt(ANN) + ids(ANSWERS[ANN][2])

    assert [p.node for p in bo.pairs] == ["step:0"]
    assert bo.pairs[0].prompt_ids == prompt(BO) + ids("4 - 1 = 3\n")
    assert (bo.pairs[0].chosen_ids, bo.pairs[0].rejected_ids) == (ids("#### 3" + EOS), ids("#### 2" + EOS))

    assert ann.log == {"samples_correct": 2, "naive_pairs": 1, "step_pairs": 2, "cuts": 2}
    assert bo.log == {"samples_correct": 3, "naive_pairs": 0, "step_pairs": 1, "cuts": 1}
    written = ["Add them.\n", "#### 5" + EOS, "Oops 2 + 3 = 7.\n", "#### 7" + EOS, "#### 8" + EOS]
    assert ann.tokens == sum(len(ids(t)) for t in ANSWERS[ANN] + written)
    assert bo.tokens == sum(len(ids(t)) for t in ANSWERS[BO] + ["#### 3" + EOS, "#### 2" + EOS])


def test_one_call_per_round_for_the_whole_group_each_try_at_its_step_temperature():
    strategy, backend = scripted()
    strategy.play(solved(strategy, seeds=[11, 12]))
    samples, *rounds = backend.calls
    assert (samples["stop"], samples["questions"]) == (False, [ANN] * 3 + [BO] * 3)
    assert samples["temperatures"] == [1.0] * 6
    assert all(c["stop"] and c["adapter"] == "policy" for c in rounds)
    # Round 0: every cut's first try; round 1: Ann's cut 0 writes its 2nd step while Bo's second try starts.
    assert [c["questions"] for c in rounds] == [[ANN, ANN, BO], [ANN, BO], [ANN], [ANN]]
    assert [c["temperatures"] for c in rounds] == [[1.1, 1.1, 1.1], [1.15, 1.1], [1.1], [1.15]]
    assert rounds[1]["partials"] == ["2 + 3 = 5\nAdd them.\n", "4 - 1 = 3\n"]
    # The budget is the answer's: max_new_tokens less the kept steps and what the try wrote so far.
    kept = len(backend.ids("2 + 3 = 5\n"))
    assert rounds[0]["budgets"][0] == 60 - kept
    assert rounds[1]["budgets"][0] == 60 - kept - len(backend.ids("Add them.\n"))
    assert backend.resets == ["policy"]  # the samples start from a reset cache
    # Every draw's seed comes from its question's seed and where it is: sample k; cut, try, step.
    assert samples["seeds"] == [seed_for(q, "sample", k) for q in (11, 12) for k in range(3)]
    assert [c["seeds"] for c in rounds] == [
        [seed_for(11, "continue", 0, 0, 0), seed_for(11, "continue", 1, 0, 0), seed_for(12, "continue", 0, 0, 0)],
        [seed_for(11, "continue", 0, 0, 1), seed_for(12, "continue", 0, 1, 0)],
        [seed_for(11, "continue", 0, 1, 0)],
        [seed_for(11, "continue", 0, 1, 1)],
    ]


def test_code_schedule_one_try_and_random_cuts():
    strategy, backend = scripted(schedule="code", max_tries=1)
    ann, bo = strategy.play(solved(strategy))
    assert [p.node for p in ann.pairs] == ["naive", "step:1"]  # cut 0's only try ended correct
    assert bo.pairs == []
    assert [c["temperatures"] for c in backend.calls[1:]] == [[1.1, 1.1, 1.1], [1.2]]

    strategy, _ = scripted(cut="random", negatives_per_question=1)
    ann, bo = strategy.play(solved(strategy))
    assert ann.log["cuts"] == 1 and bo.log["cuts"] == 1
    assert len([p for p in ann.pairs if p.node.startswith("step:")]) == 1


LONG = "Cy has 1 cat and gets 1 more. How many cats?"
LONG_ANSWER = "one\ntwo\nthree\nfour\nfive\n#### 2" + EOS
LONG_STEPS = {(LONG, "one\ntwo\nthree\nfour\nfive\n"[: i]): ["#### 9" + EOS]
              for i in [4, 8, 14, 19, 24]}


CY = Record(id="c", question=LONG, answer="2", solution=None, task="gsm8k")


def random_cut_nodes(seed: int) -> tuple[list[str], list[list[int]]]:
    strategy, backend = scripted({LONG: [LONG_ANSWER]}, LONG_STEPS, samples=1, cut="random",
                                 negatives_per_question=2)
    (play,) = strategy.play(solved(strategy, [CY], [seed]))
    return [p.node for p in play.pairs], [c["seeds"] for c in backend.calls]


def test_random_cuts_are_a_function_of_the_seed():
    nodes, seeds = random_cut_nodes(7)
    assert random_cut_nodes(7) == (nodes, seeds)
    assert len(nodes) == 2 and len(set(nodes)) == 2
    assert all(n in {f"step:{k}" for k in range(5)} for n in nodes)  # six steps: cuts 0..4 leave one at least
    drawn = {tuple(random_cut_nodes(seed)[0]) for seed in range(8)}
    assert len(drawn) > 1
    assert random_cut_nodes(8)[1] != seeds


SEEDED_ANSWERS = {
    LONG: [LONG_ANSWER, "one\ntwo\n#### 3" + EOS],
    ANN: ANSWERS[ANN],
}
SEEDED_STEPS = {key: ["#### 9" + EOS, "#### 2" + EOS, "#### 4" + EOS] for key in LONG_STEPS} | STEPS | {
    (ANN, "2 + 3 = 5\nSo 5 apples.\n"): ["#### 8" + EOS, "#### 5" + EOS]}


def seeded_play(records: list[Record], seeds: list[int]):
    """Each question's pairs, tokens and the seeds its prompts got, on a backend whose samples follow the seeds."""
    strategy, backend = scripted(SEEDED_ANSWERS, SEEDED_STEPS, by_seed=True, samples=4, cut="random",
                                 negatives_per_question=2, max_tries=3)
    plays = strategy.play(solved(strategy, records, seeds))
    seeds_of = {r.question: [s for c in backend.calls for q, s in zip(c["questions"], c["seeds"]) if q == r.question]
                for r in records}
    return {r.id: (play.pairs, play.tokens, play.log, seeds_of[r.question]) for r, play in zip(records, plays)}


def test_a_questions_pairs_do_not_depend_on_the_other_questions_of_its_group():
    alone = seeded_play([CY], [5])["c"]
    assert any(p.node.startswith("step:") for p in alone[0]), "no step pair: the test checks nothing"
    for records, seeds in [([CY, RECORDS[0]], [5, 6]), ([RECORDS[0], CY], [6, 5]), ([RECORDS[0], CY], [5, 5])]:
        assert seeded_play(records, seeds)["c"] == alone
    assert seeded_play([CY], [4])["c"] != alone  # the question's own seed does change what it gets


def test_timings_report_the_phases_and_reset():
    strategy, _ = scripted()
    strategy.play(solved(strategy))
    first = strategy.timings()
    assert set(first) == {"sample_seconds", "continue_seconds"} and all(v > 0 for v in first.values())
    assert strategy.timings() == {"sample_seconds": 0.0, "continue_seconds": 0.0}


def test_the_loss_of_a_step_pair_has_zero_gradient_on_the_shared_prefix(tiny_peft, perturb):
    """The DPO loss of a step-controlled pair must not score the kept steps: the gradient of the loss with
    respect to the last hidden state at every position that predicts a prompt token (question or kept step) is
    exactly zero, and non-zero where it predicts a completion token. Scoring the prefix would fail both checks
    (and the log-prob decomposition below)."""
    model, tok = tiny_peft(dropout=0.0)
    perturb(model, "answer")
    model.set_adapter("answer")
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    question, kept = enc("Q: 2+3?\n"), enc("2 + 3 = 5\n")
    # completions that differ before their last token: two forward rows (completion_logps shares a row between
    # sequences that differ only in their last token, where the shared tokens' gradients cancel exactly)
    chosen, rejected = enc("#### 5"), enc("#### 17")
    prompt = question + kept

    with torch.no_grad(), model.disable_adapter():
        ref = completion_logps(model, [prompt, prompt], [chosen, rejected], tok.pad_token_id)
    captured = []

    def keep_hidden(module, args, output):
        output.last_hidden_state.retain_grad()
        captured.append(output)

    hook = model.get_decoder().register_forward_hook(keep_hidden)
    policy = completion_logps(model, [prompt, prompt], [chosen, rejected], tok.pad_token_id)
    loss, _ = dpo_loss(policy[:1], policy[1:], ref[:1], ref[1:], beta=1.0)
    loss.sum().backward()
    hook.remove()
    grad = captured[0].last_hidden_state.grad  # [2 rows, positions, hidden]
    # Position t predicts token t + 1: prompt tokens 1..len(prompt)-1 are predicted at 0..len(prompt)-2.
    assert grad[:, : len(prompt) - 1].abs().max().item() == 0.0
    for row, completion in enumerate([chosen, rejected]):
        scored = grad[row, len(prompt) - 1 : len(prompt) - 1 + len(completion)]
        assert (scored.abs().amax(-1) > 0).all()

    with torch.no_grad():
        whole = completion_logps(model, [question], [kept + chosen], tok.pad_token_id)
        prefix = completion_logps(model, [question], [kept], tok.pad_token_id)
        suffix = completion_logps(model, [prompt], [chosen], tok.pad_token_id)
    assert prefix.item() < -1.0  # scoring the kept steps would move the pair's log-prob by this much
    assert math.isclose(suffix.item(), (whole - prefix).item(), rel_tol=1e-5, abs_tol=1e-4)


def tiny_strategy(**cfg) -> StepControlled:
    """The strategy on the warm tiny model with the HF backend (built here, not from a recipe)."""
    from harness.config.recipe import ModelConfig, TinyModel
    from harness.config.section import LoraSpec
    from harness.generation.hf import HFBackend
    from harness.modeling.models import load_base, with_adapters

    model, tok = load_base(ModelConfig(name="tiny", tiny=TinyModel(warmup_steps=300)), "cpu")
    model = with_adapters(model, {"policy": LoraSpec()})
    template = PromptTemplate(user="{question}")
    prompter = Prompter(tok, template, chat_template=True)
    engine = SimpleNamespace(backend=HFBackend(model, tok), prompter=prompter, tokenizer=tok, model=model)
    fields = {"answer_prompt": template, "temperature": 1.0, "max_new_tokens": 36, "samples": 4,
              "step_delimiters": ["."], "cut": "every", "negatives_per_question": 2, "max_tries": 2} | cfg
    return StepControlled(StepControlledConfig(**fields), engine)


def test_tiny_model_pairs_are_token_exact_and_repeat_for_a_seed(warm_tiny):
    from harness.config.recipe import DataSource
    from harness.data.records import load_source
    from harness.grading.grader import grade

    records = load_source(DataSource(source="bundled:arith", format="gsm8k", limit=8)).records
    strategy = tiny_strategy()
    seeds = list(range(len(records)))
    plays = strategy.play(strategy.solve(records, seeds))
    again = tiny_strategy().play(strategy.solve(records, seeds))
    assert [[p.to_dict() for p in play.pairs] for play in plays] == [[p.to_dict() for p in play.pairs]
                                                                      for play in again]
    assert [play.tokens for play in plays] == [play.tokens for play in again]
    steps = [(r, p) for r, play in zip(records, plays) for p in play.pairs if p.node.startswith("step:")]
    assert steps, "the warm tiny model gave no step-controlled pair: the test checks nothing"
    text = lambda ids: strategy.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    for record, pair in steps:
        head = strategy.prompter.answer_prompt(record.question)
        kept = pair.prompt_ids[len(head) :]
        assert pair.prompt_ids[: len(head)] == head and text(kept).endswith(".")
        assert grade(text(kept + pair.chosen_ids), record.answer, record.task).correct
        assert not grade(text(kept + pair.rejected_ids), record.answer, record.task).correct


@pytest.mark.parametrize("name", ["scdpo-metamath-mistral7b", "scdpo-internlm2-20b", "scdpo-tiny"])
def test_recipe_strategy_blocks_validate(name):
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    strategy = StepControlledConfig.model_validate(recipe["online"]["strategy"])
    dpo = DPOConfig.model_validate(recipe["online"]["dpo"])
    assert strategy.name == "step_controlled"
    sources = recipe.get("sources", {})
    for field in ("samples", "schedule", "cut", "negatives_per_question", "max_tries", "step_delimiters"):
        assert f"online.strategy.{field}" in sources, field
    if name != "scdpo-tiny":
        assert dpo.update == "after_stream" and dpo.epochs == 2
        assert all(f"online.dpo.{f}" in sources for f in ("beta", "lr", "epochs", "batch_pairs"))


def test_tiny_model_pairs_of_a_question_are_the_same_alone_and_in_its_group(warm_tiny):
    """On the real HF backend each row samples from its own generator: a question played alone gives the pairs it
    gives inside a group of 8 (the batched forward passes differ in shape and padding; on this model and these seeds
    their float rounding does not change a sampled id)."""
    from harness.config.recipe import DataSource
    from harness.data.records import load_source

    records = load_source(DataSource(source="bundled:arith", format="gsm8k", limit=8)).records
    strategy = tiny_strategy()
    solutions = strategy.solve(records, [seed_for(4, i) for i in range(len(records))])
    together = strategy.play(solutions)
    assert any(p.node.startswith("step:") for play in together for p in play.pairs), "no step pair: checks nothing"
    for solution, play in zip(solutions, together):
        (alone,) = strategy.play([solution])
        assert [p.to_dict() for p in alone.pairs] == [p.to_dict() for p in play.pairs]
        assert (alone.tokens, alone.log) == (play.tokens, play.log)

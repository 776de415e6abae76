"""MCTSDPO on a scripted backend (which steps are sampled, how they are batched and seeded, which pairs come out) and
on the tiny model (a question's play is a function of its seed, whichever questions share its group)."""

from __future__ import annotations

import math
import re
from collections import Counter
from types import SimpleNamespace

import pytest
from pydantic import ValidationError
from scripted import EOS, scripted_ids, split_answer_prompt

from harness.config.section import PromptTemplate
from harness.data.records import Record
from harness.generation.backend import Sample, prompt_seeds, temperatures, token_budgets
from harness.generation.prompts import Prompter
from harness.run.seeds import seed_for
from harness.strategies.mcts_dpo.config import MCTSDPOConfig
from harness.strategies.mcts_dpo.strategy import MCTSDPO

EVAL = PromptTemplate(user="Q: {question}\nA: {partial_answer}\nOK?")


class StepBackend:
    """A fake backend with scripted steps (implements generate / next_token_logprobs / reset_cache).

    `steps[question][partial answer text]` lists what is sampled after that partial answer: the k-th row of one call
    with the same partial answer gets the k-th entry (`by_seed`: a row seeded s gets entry s mod the list's length,
    as a real backend's draw depends on its seed only); an entry ending in `<EOS>` ends with the EOS id. Budgets and
    stop ids are honoured as a real backend does (a stop id is kept). Every token has log-prob -0.5.
    `confidence[question][partial answer text]` is P("B") after the self-evaluation prompt. Calls are recorded, with
    each row's seed.
    """

    def __init__(self, tok, prompter: Prompter, steps: dict, confidence: dict, by_seed: bool = False) -> None:
        self.tok, self.prompter, self.steps, self.confidence, self.by_seed = tok, prompter, steps, confidence, by_seed
        self.eos_token_ids = [tok.eos_token_id]
        self.calls: list[dict] = []
        self.eval_calls: list[list[tuple[str, str]]] = []
        self.resets: list[str | None] = []

    def ids(self, text: str) -> list[int]:
        return scripted_ids(self.tok, text, self.eos_token_ids)

    def _split(self, prompt: list[int]) -> tuple[str, str]:
        return split_answer_prompt(self.tok, self.prompter, self.steps, prompt)

    def generate(self, prompts, adapter, max_new_tokens, temperature, top_p=1.0, n=1, seed=0, stop=None):
        stop_ids = {s[0] for s in stop or []}
        seen: Counter = Counter()
        rows, out = [], []
        seeds = prompt_seeds(seed, len(prompts), n)
        for prompt, budget, temp, row_seed in zip(prompts, token_budgets(max_new_tokens, len(prompts)),
                                                  temperatures(temperature, len(prompts)), seeds):
            question, partial = self._split(prompt)
            options = self.steps[question][partial]
            text = options[row_seed % len(options)] if self.by_seed else options[seen[question, partial]]
            seen[question, partial] += 1
            ids, finished, stopped = [], False, False
            for token in self.ids(text):
                ids.append(token)
                finished, stopped = token in self.eos_token_ids, token in stop_ids
                if finished or stopped or len(ids) == budget:
                    break
            rows.append((question, partial, budget, temp))
            out.append([Sample(ids, [-0.5] * len(ids), finished, stopped)])
        self.calls.append({"adapter": adapter, "seeds": seeds, "rows": rows})
        return out

    def next_token_logprobs(self, prompts, adapter, token_ids):
        assert adapter == "policy"
        asked, out = [], []
        for prompt in prompts:
            question, partial = re.search(r"Q: (.*?)\nA: (.*)\nOK\?", self.tok.decode(prompt), re.S).groups()
            asked.append((question, partial))
            out.append([math.log(self.confidence[question][partial])] * len(token_ids))
        self.eval_calls.append(asked)
        return out

    def reset_cache(self, adapter):
        self.resets.append(adapter)


def config(**fields) -> MCTSDPOConfig:
    settings = dict(answer_prompt={"user": "{question}"}, eval_prompt=EVAL, temperature=1.0, root_temperature=0.5,
                    step_delimiters=["."], max_step_tokens=20, max_new_tokens=60, max_depth=2, simulations=2,
                    root_simulation_factor=1, breadth_root=2, breadth=2, c_puct=1.0)
    return MCTSDPOConfig(**(settings | fields))


def strategy(tok, cfg: MCTSDPOConfig, steps: dict, confidence: dict,
             by_seed: bool = False) -> tuple[MCTSDPO, StepBackend]:
    prompter = Prompter(tok, cfg.answer_prompt, chat_template=True)
    backend = StepBackend(tok, prompter, steps, confidence, by_seed)
    return MCTSDPO(cfg, SimpleNamespace(backend=backend, prompter=prompter, tokenizer=tok, model=None)), backend


def solutions(mcts: MCTSDPO, records: list[Record], seeds: list[int]):
    prompter = mcts.prompter
    return [SimpleNamespace(record=r, prompt_ids=prompter.answer_prompt(r.question), seed=seed)
            for r, seed in zip(records, seeds)]


def draw_seed(question_seed: int, position: str, draft: int, part: int) -> int:
    """The seed of a draft's `part`-th sampling call, for a leaf at `position` of a question seeded `question_seed`."""
    return seed_for(seed_for(question_seed, "expand", position), draft, part)


Q1 = Record(id="q1", question="Q1", answer="3", solution="1 + 2 = 3\n#### 3", task="gsm8k")
Q2 = Record(id="q2", question="Q2", answer="5", solution=None, task="gsm8k")
STEPS = {
    "Q1": {
        "": ["1 + 2 = 3.", "1 + 2 = 4."],
        "1 + 2 = 3.": [" The answer is: 3" + EOS, " The answer is: 9" + EOS],
        "1 + 2 = 4.": [" The answer is: 4" + EOS, " The answer is: 4" + EOS],
    },
    "Q2": {
        "": [".", "2 + 3 = 6."],  # the first draw stops on a delimiter alone: it goes on next round
        ".": ["2 + 3 = 5."],
        ".2 + 3 = 5.": [" The answer is: 5" + EOS, " The answer is: 6" + EOS],
        "2 + 3 = 6.": [" The answer is: 6" + EOS, " The answer is: 6" + EOS],
    },
}
CONFIDENCE = {
    "Q1": {"1 + 2 = 3.": 0.8, "1 + 2 = 4.": 0.3, "1 + 2 = 3. The answer is: 3": 0.9,
           "1 + 2 = 3. The answer is: 9": 0.5, "1 + 2 = 4. The answer is: 4": 0.4},
    "Q2": {".2 + 3 = 5.": 0.7, "2 + 3 = 6.": 0.2, ".2 + 3 = 5. The answer is: 5": 0.9,
           ".2 + 3 = 5. The answer is: 6": 0.1, "2 + 3 = 6. The answer is: 6": 0.3},
}


def test_pairs_from_a_scripted_search(tiny_base):
    _, tok = tiny_base()
    mcts, backend = strategy(tok, config(), STEPS, CONFIDENCE)
    plays = mcts.play(solutions(mcts, [Q1, Q2], [7, 8]))
    assert backend.resets == ["policy"]
    ids, head = backend.ids, mcts.prompter.answer_prompt("Q1")

    # Q1, by hand (priors are equal among siblings of equal length): root expands into A = "1 + 2 = 3." (value 0.8)
    # and B (0.3); PUCT takes A, which expands into A1 (correct: 0.9 + 1) and A2 (wrong: 0.5 - 1); A1 ends the first
    # simulation: A.V = ((1.9 - 0.8) + (-0.5 - 0.8)) / 2 = -0.1, A.Q 0.7, A.N 2. The second simulation explores B,
    # whose two identical draws make one child B1 (0.4 - 1): B.Q = 0.3 + (-0.6 - 0.3) = -0.6, B.N 2. Commit A (2
    # visits each, higher Q); two simulations from A visit A1 (Q 1.1) twice: commit A1, which is terminal.
    q1 = plays[0]
    assert [(p.node, p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in q1.pairs] == [
        ("step:0", head, ids("1 + 2 = 3."), ids("1 + 2 = 4. The answer is: 4" + EOS)),  # B's only child rides on B
        ("step:1", head + ids("1 + 2 = 3."), ids(" The answer is: 3" + EOS), ids(" The answer is: 9" + EOS)),
    ]
    assert all(p.agent == "policy" for p in q1.pairs)
    # visit-count smoothing: A 2 / B 2 -> 2 / (2 + 2) = 0.5; A1 3 / A2 0 -> 0
    assert [p.label_smoothing for p in q1.pairs] == [pytest.approx(0.5), 0.0]
    assert q1.log == {"simulations": 4, "tree_nodes": 5, "depth": 2, "search_correct": True, "rounds": 3}
    assert q1.tokens == 2 * 10 + 2 * 18 + 2 * 18

    # Every round is one generate call holding every open draft of both questions: the roots at the root
    # temperature, then Q1's A beside Q2's blank draft, which goes on (its step is ".2 + 3 = 5.").
    assert len(backend.calls) == 4
    assert [(q, partial, temp) for q, partial, _, temp in backend.calls[0]["rows"]] == [
        ("Q1", "", 0.5), ("Q1", "", 0.5), ("Q2", "", 0.5), ("Q2", "", 0.5)]
    assert [(q, partial, temp) for q, partial, _, temp in backend.calls[1]["rows"]] == [
        ("Q1", "1 + 2 = 3.", 1.0), ("Q1", "1 + 2 = 3.", 1.0), ("Q2", ".", 0.5)]
    assert [{q for q, *_ in call["rows"]} for call in backend.calls] == [{"Q1", "Q2"}] * 3 + [{"Q2"}]
    assert all(call["adapter"] == "policy" for call in backend.calls)
    # step budgets: 20 tokens, less what a continued draft holds (1)
    assert [row[2] for row in backend.calls[1]["rows"]] == [20, 20, 19]
    # each row's seed is its question's seed and where it is: the leaf's position, the draft, its sampling call
    assert backend.calls[0]["seeds"] == [draw_seed(7, "", 0, 0), draw_seed(7, "", 1, 0), draw_seed(8, "", 0, 0),
                                         draw_seed(8, "", 1, 0)]
    assert backend.calls[1]["seeds"] == [draw_seed(7, "0", 0, 0), draw_seed(7, "0", 1, 0), draw_seed(8, "", 0, 1)]
    # round 2: Q1 expands its second root child B, Q2 its first root child ".2 + 3 = 5."
    assert [(q, partial, seed) for (q, partial, *_), seed in zip(backend.calls[2]["rows"], backend.calls[2]["seeds"])] \
        == [("Q1", "1 + 2 = 4.", draw_seed(7, "1", 0, 0)), ("Q1", "1 + 2 = 4.", draw_seed(7, "1", 1, 0)),
            ("Q2", ".2 + 3 = 5.", draw_seed(8, "0", 0, 0)), ("Q2", ".2 + 3 = 5.", draw_seed(8, "0", 1, 0))]
    # all new nodes of a round are self-evaluated in one call; round 0 holds Q1's two steps only (Q2 goes on)
    assert backend.eval_calls[0] == [("Q1", "1 + 2 = 3."), ("Q1", "1 + 2 = 4.")]
    assert {q for q, _ in backend.eval_calls[1]} == {"Q1", "Q2"}
    # Q2's search commits to the correct step and answer
    assert plays[1].log["search_correct"] is True
    assert plays[1].pairs[0].chosen_ids == ids(".2 + 3 = 5.")

    timings = mcts.timings()
    assert set(timings) == {"search_seconds", "self_eval_seconds"} and all(v >= 0 for v in timings.values())
    assert mcts.timings() == {"search_seconds": 0.0, "self_eval_seconds": 0.0}


def test_finishing_step_runs_past_delimiters_and_pairs_are_capped(tiny_base):
    _, tok = tiny_base()
    steps = {"Q1": {
        "": ["1 + 2 = 3.", "1 + 2 = 4."],
        "1 + 2 = 3.": [" So 3."],
        "1 + 2 = 3. So 3.": [" The answer is: 3" + EOS],
        "1 + 2 = 4.": [" So 4. The answer is: 4" + EOS],
    }}
    confidence = {"Q1": {"1 + 2 = 3.": 0.6, "1 + 2 = 4.": 0.5, "1 + 2 = 3. So 3. The answer is: 3": 0.9,
                         "1 + 2 = 4. So 4. The answer is: 4": 0.9}}
    cfg = config(max_depth=1, max_pairs=1, visit_label_smoothing=False)
    mcts, backend = strategy(tok, cfg, steps, confidence)
    (play,) = mcts.play(solutions(mcts, [Q1], [0]))
    # after depth 1 one draw writes the rest of the answer: its budget is the answer budget left (60 - 10), and a
    # delimiter does not end it
    assert [row[:3] for row in backend.calls[1]["rows"]] == [("Q1", "1 + 2 = 3.", 50)]
    assert [row[:3] for row in backend.calls[2]["rows"]] == [("Q1", "1 + 2 = 3. So 3.", 44)]
    (pair,) = play.pairs
    assert pair.chosen_ids == backend.ids("1 + 2 = 3. So 3. The answer is: 3" + EOS)
    assert pair.label_smoothing is None
    assert play.log["depth"] == 2 and play.log["search_correct"] is True


def test_answer_budget_ends_a_step_as_terminal(tiny_base):
    _, tok = tiny_base()
    steps = {"Q1": {"": ["1 + 2 = 4 and more", "The answer is: 3" + EOS]}}
    confidence = {"Q1": {"1 + 2 = 4 ": 0.9, "The answer": 0.1}}
    mcts, backend = strategy(tok, config(max_new_tokens=10, max_step_tokens=20, solved_only=False), steps,
                             confidence)
    (play,) = mcts.play(solutions(mcts, [Q1], [0]))
    # both draws stop at the answer budget (10 tokens): terminal, graded wrong, so no expansion after the root
    assert len(backend.calls) == 1 and [row[2] for row in backend.calls[0]["rows"]] == [10, 10]
    assert play.log["search_correct"] is False and play.log["depth"] == 1
    (pair,) = play.pairs  # 0.9 - 1 against 0.1 - 1
    assert pair.chosen_ids == backend.ids("1 + 2 = 4 ")
    # the authors' script keeps the pairs of solved questions only
    mcts, _ = strategy(tok, config(max_new_tokens=10, max_step_tokens=20), steps, confidence)
    (unsolved,) = mcts.play(solutions(mcts, [Q1], [0]))
    assert unsolved.pairs == [] and unsolved.log == play.log


def test_solve_is_one_pass_with_or_without_the_policy(tiny_base):
    _, tok = tiny_base()
    steps = {"Q1": {"": ["1 + 2 = 3. The answer is: 3" + EOS]}}
    mcts, backend = strategy(tok, config(), steps, {})
    (solution,) = mcts.solve([Q1], [3])
    (frozen,) = mcts.solve([Q1], [3], trained=False, temperature=0.0)
    assert solution.correct and solution.log == {"end": "eos"} and solution.seed == 3
    assert frozen.answer_ids == solution.answer_ids
    assert [(c["adapter"], c["rows"][0][2:]) for c in backend.calls] == [("policy", (60, 1.0)), (None, (60, 0.0))]


def test_eval_prompt_needs_the_partial_answer():
    with pytest.raises(ValidationError, match="partial_answer"):
        config(eval_prompt={"user": "Q: {question}"})


def played(plays) -> list:
    """What a play gives, comparable: each question's pairs (with their smoothing), tokens and log."""
    return [([(p.prompt_ids, p.chosen_ids, p.rejected_ids, p.node, p.label_smoothing) for p in play.pairs],
             play.tokens, play.log) for play in plays]


def test_a_question_searches_alike_alone_and_in_a_group(tiny_base):
    _, tok = tiny_base()
    cfg = config(simulations=3)

    def search(records: list[Record], seeds: list[int]):
        mcts, backend = strategy(tok, cfg, STEPS, CONFIDENCE, by_seed=True)
        plays = mcts.play(solutions(mcts, records, seeds))
        # Q1's tree, in the order it grew: every draw (partial answer, budget, temperature, seed), every evaluation
        draws = [(row[1:], seed) for call in backend.calls for row, seed in zip(call["rows"], call["seeds"])
                 if row[0] == "Q1"]
        evaluated = [partial for call in backend.eval_calls for question, partial in call if question == "Q1"]
        return played(plays), draws, evaluated

    (alone,), alone_draws, alone_evaluated = search([Q1], [11])
    (_, grouped), grouped_draws, grouped_evaluated = search([Q2, Q1], [5, 11])
    assert alone == grouped and alone[0]
    assert alone_draws == grouped_draws and alone_evaluated == grouped_evaluated
    # the draws are the question's own: another seed draws other steps
    (_, other_draws, _) = search([Q1], [12])
    assert [seed for _, seed in other_draws] != [seed for _, seed in alone_draws][: len(other_draws)]


def test_play_is_a_function_of_each_question_seed(tiny_base, perturb):
    from harness.config.recipe import LoraSpec
    from harness.generation.hf import HFBackend
    from harness.modeling.models import with_adapters

    base, tok = tiny_base()
    model = with_adapters(base, {"policy": LoraSpec()})
    perturb(model, "policy", seed=1)
    cfg = config(step_delimiters=[" "], max_step_tokens=6, max_new_tokens=16, eval_correct=["B", "A"],
                 solved_only=False)
    prompter = Prompter(tok, cfg.answer_prompt, chat_template=True)
    mcts = MCTSDPO(cfg, SimpleNamespace(backend=HFBackend(model, tok), prompter=prompter, tokenizer=tok,
                                        model=model))

    def run(records: list[Record], seeds: list[int]) -> list:
        return played(mcts.play(solutions(mcts, records, seeds)))

    first = run([Q1, Q2], [0, 1])
    assert any(pairs for pairs, _, _ in first)
    other = run([Q1, Q2], [2, 3])
    assert run([Q1, Q2], [0, 1]) == first  # the cache of the other play is not used
    assert other != first
    # each question's play is its own: alone, or in a group in another order, it is the same
    assert run([Q2], [1]) == first[1:]
    assert run([Q2, Q1], [1, 0]) == first[::-1]

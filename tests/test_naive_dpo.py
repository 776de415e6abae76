"""Instance-level DPO on a scripted backend: which sampled answers pair up, and what the pairs hold."""

from __future__ import annotations

from types import SimpleNamespace

from harness.data.records import Record
from harness.generation.prompts import Prompter
from harness.modeling.families import family_tokenizer
from harness.strategies.naive_dpo.config import NaiveDPOConfig
from harness.strategies.naive_dpo.strategy import NaiveDPO
from harness.training.pairs import Pair

Q, R = "What is 3+4?", "What is 1+1?"


def strategy(scripted_backend, chunks: dict[str, list[str]], **fields):
    tok = family_tokenizer("chatml")
    cfg = NaiveDPOConfig(answer_prompt={"user": "{question}"}, max_new_tokens=32, samples=4, **fields)
    prompter = Prompter(tok, cfg.answer_prompt, chat_template=True)
    backend = scripted_backend(tok, prompter, {q: {"": options} for q, options in chunks.items()}, {}, None)
    engine = SimpleNamespace(backend=backend, prompter=prompter, tokenizer=tok)
    return NaiveDPO(cfg, engine), backend, tok


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]


def test_pairs_are_correct_against_wrong_samples_in_order(scripted_backend):
    # the k-th draw of a question takes the k-th option: draw 0 is the solved answer, draws 1-4 the samples
    chunks = {Q: ["7<EOS>", "3+4=7<EOS>", "3+4=9<EOS>", "7<EOS>", "I think 8<EOS>"],
              R: ["2<EOS>", "2<EOS>", "1+1=2<EOS>", "2<EOS>", "2<EOS>"]}
    naive, backend, tok = strategy(scripted_backend, chunks, pairs_per_question=2)
    records = [Record("q", Q, "7", None, "gsm8k"), Record("r", R, "2", None, "gsm8k")]
    solutions = naive.solve(records, [0, 1])
    assert [s.correct for s in solutions] == [True, True]
    plays = naive.play(solutions)
    prompt = solutions[0].prompt_ids
    assert plays[0].pairs == [Pair("policy", prompt, ids(tok, "3+4=7"), ids(tok, "3+4=9"), "answer"),
                              Pair("policy", prompt, ids(tok, "7"), ids(tok, "I think 8"), "answer")]
    assert plays[1].pairs == []  # every sample right: nothing to prefer
    assert [p.log for p in plays] == [{"samples_correct": 2}, {"samples_correct": 4}]
    assert plays[0].tokens == sum(len(ids(tok, t.removesuffix("<EOS>"))) for t in chunks[Q][1:])
    assert len(backend.generate_calls) == 2 + 2 * 4  # two answers, then four samples of each


def test_at_most_pairs_per_question(scripted_backend):
    chunks = {Q: ["7<EOS>", "7<EOS>", "8<EOS>", "7<EOS>", "9<EOS>"]}
    naive, _, _ = strategy(scripted_backend, chunks)
    solutions = naive.solve([Record("q", Q, "7", None, "gsm8k")], [0])
    (play,) = naive.play(solutions)
    assert len(play.pairs) == 1 and play.log == {"samples_correct": 2}
    assert naive.timings()["sample_seconds"] > 0 and naive.timings() == {"sample_seconds": 0.0}

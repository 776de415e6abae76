"""What the tests' scripted backends share: scripted text to token ids, and which question an answer prompt holds.

A scripted backend answers from tables keyed by (question, partial answer text) instead of a model; these two
helpers read a prompt back into that key and write a scripted entry out as the ids a backend would return.
"""

from __future__ import annotations

EOS = "<EOS>"
"""A scripted entry ending with this ends with the tokenizer's EOS id."""


def scripted_ids(tok, text: str, eos_ids: list[int]) -> list[int]:
    """The ids of a scripted entry (`<EOS>` at its end: the first of `eos_ids`)."""
    ids = tok.encode(text.removesuffix(EOS), add_special_tokens=False)
    return ids + eos_ids[:1] if text.endswith(EOS) else ids


def split_answer_prompt(tok, prompter, questions, prompt: list[int]) -> tuple[str, str]:
    """(question, partial answer text) of an answer prompt: the question whose prompt ids it starts with."""
    for question in questions:
        head = prompter.answer_prompt(question)
        if prompt[: len(head)] == head:
            return question, tok.decode(prompt[len(head) :])
    raise AssertionError(f"unscripted answer prompt {tok.decode(prompt)!r}")

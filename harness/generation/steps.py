"""Stop sequences that end a generation at the end of a reasoning step.

Step-level methods (MCTS-DPO, arXiv:2405.00451 §2; SCDPO, arXiv:2407.00782 §3) generate one step at a time, a
step being the text up to a delimiter such as a newline. A stop on the delimiter's own token id is not enough:
BPE vocabularies merge "\\n" with its neighbours (".\\n\\n" is one Llama-3 token, as is "\\n\\n"), so a
step that ends ".\\n\\n" never produces the lone "\\n" id and would run on into the next steps. The stop set is
therefore every vocabulary id whose text contains a delimiter; the step then ends with that whole token (a merged
token may carry a few characters past the delimiter, which then belong to this step). Neither transformers nor
vLLM builds such a set (both stop on given ids or on matched text), which is why it is built here.
"""

from __future__ import annotations

import weakref

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per tokenizer, per (delimiters, vocabulary size): the sorted stop ids (decoding a 128k vocabulary takes ~0.5 s)."""


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens: its named ones and every added token marked special."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


def step_stop_ids(tokenizer, delimiters: list[str]) -> list[list[int]]:
    """Every non-special vocabulary id whose decoded text contains one of `delimiters`, each as a one-id stop
    sequence, sorted by id. A delimiter split across two tokens is not found (each token is decoded alone)."""
    if not delimiters or any(not d for d in delimiters):
        raise ValueError(f"need non-empty delimiters, got {delimiters!r}")
    key = (tuple(delimiters), len(tokenizer))
    per_tokenizer = _CACHE.setdefault(tokenizer, {})
    if key not in per_tokenizer:
        skip = special_ids(tokenizer)
        ids = sorted(i for i in set(tokenizer.get_vocab().values()) if i not in skip)
        texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        per_tokenizer[key] = tuple(i for i, text in zip(ids, texts) if any(d in text for d in delimiters))
    return [[i] for i in per_tokenizer[key]]

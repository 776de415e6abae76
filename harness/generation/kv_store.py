"""The KV of sequences the HF backend decoded, kept for the next call whose prompts extend them.

Written by hand (transformers has no cross-call prefix cache; vLLM has one): a Flow's next chunk continues
exactly the sequence the previous call decoded, and a question's rollouts continue prefixes of its main chain,
so their prompts need not be encoded again. Entries are only valid for the weights that computed them: the
store remembers a fingerprint of the model's parameters (their in-place version counters, which every optimizer
step and every weight load bumps) and forgets everything when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def weights_fingerprint(model: torch.nn.Module) -> int:
    """Changes whenever any parameter is modified in place (optimizer steps, loads, merges)."""
    return sum(p._version for p in model.parameters())


@dataclass
class Entry:
    tokens: tuple[int, ...]
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    """Per layer: keys and values [kv_heads, len(tokens), head_dim]."""


class KVStore:
    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        """Tokens kept at most (oldest entries go first); 0 keeps nothing."""
        self.entries: list[Entry] = []
        self.fingerprint: int | None = None

    def clear(self) -> None:
        self.entries = []

    def check(self, fingerprint: int) -> None:
        """Forget entries computed with other weights."""
        if fingerprint != self.fingerprint:
            self.entries, self.fingerprint = [], fingerprint

    def add(self, tokens: tuple[int, ...], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep a sequence's KV; entries it extends are dropped (it holds their KV too)."""
        if not tokens or len(tokens) > self.max_tokens:
            return
        self.entries = [e for e in self.entries if e.tokens != tokens[: len(e.tokens)]]
        self.entries.append(Entry(tokens, kv))
        while sum(len(e.tokens) for e in self.entries) > self.max_tokens:
            self.entries.pop(0)

    def matches(self, prompts: list[list[int]]) -> list[tuple[int, int] | None]:
        """For each prompt, (entry index, length) of its longest cached prefix that leaves its last token to
        encode, or None."""
        trie: dict = {}
        for index, entry in enumerate(self.entries):
            level = trie
            for token in entry.tokens:
                level = level.setdefault(token, (index, {}))[1]
        out: list[tuple[int, int] | None] = []
        for prompt in prompts:
            level, hit = trie, None
            for depth, token in enumerate(prompt[:-1]):
                if token not in level:
                    break
                index, level = level[token]
                hit = (index, depth + 1)
            out.append(hit)
        return out

    def past(self, hits: list[tuple[int, int] | None], width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, rows' past KV [rows, kv_heads, width, head_dim]: each hit's cached prefix, zero-padded."""
        template = self.entries[next(hit for hit in hits if hit)[0]].kv
        layers = []
        for layer, (k0, _) in enumerate(template):
            keys = k0.new_zeros((len(hits), k0.shape[0], width, k0.shape[2]))
            values = torch.zeros_like(keys)
            for row, hit in enumerate(hits):
                if hit is not None:
                    k, v = self.entries[hit[0]].kv[layer]
                    keys[row, :, : hit[1]] = k[:, : hit[1]]
                    values[row, :, : hit[1]] = v[:, : hit[1]]
            layers.append((keys, values))
        return layers

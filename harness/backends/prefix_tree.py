"""Prompts that share prefixes, packed as token trees so that every shared token is encoded once.

Written by hand because transformers encodes each row of a batch in full, while a Flow batch is mostly shared
prefixes: a question's rollouts all start with its prompt and the main chain's partial answer, and its Stop
prompts repeat the question and every partial answer once per chunk boundary. Here each packed row holds the
trie of several prompts. A 4D attention mask lets a token see only its ancestors and its position id is its depth,
so the last token of every prompt computes exactly what it would compute alone (up to float rounding), while
the row costs only its distinct tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packing:
    ids: torch.Tensor
    """[rows, width] token ids (padding after each row's nodes)."""
    positions: torch.Tensor
    """[rows, width] each node's depth in its prompt (0 = first token)."""
    mask: torch.Tensor
    """[rows, 1, width, width] True where a node may attend: itself and its ancestors (padding: itself only)."""
    rows: list[int]
    """Row holding each prompt, in the caller's order."""
    paths: list[list[int]]
    """Column of each of a prompt's tokens in its row, first token first."""
    nodes: int
    """Tokens actually encoded (each shared one once)."""


def pack(prompts: list[list[int]], row_tokens: int, pad_id: int) -> Packing:
    """Pack prompts into trie rows of at most `row_tokens` nodes (a longer prompt gets a row of its own).

    Prompts are inserted in sorted order so that the ones sharing a prefix land in the same row.
    """
    if any(not p for p in prompts):
        raise ValueError("cannot pack an empty prompt")
    tries: list[dict] = []  # per row: nested {token: (column, children)}
    parents: list[list[int]] = []  # per row: the parent column of each node (-1 for a root)
    tokens: list[list[int]] = []
    rows, paths = [0] * len(prompts), [[] for _ in prompts]
    for index in sorted(range(len(prompts)), key=lambda i: prompts[i]):
        prompt = prompts[index]
        if not tries or len(parents[-1]) + _new_nodes(tries[-1], prompt) > max(row_tokens, len(prompt)):
            tries.append({})
            parents.append([])
            tokens.append([])
        level, parent, path = tries[-1], -1, []
        for token in prompt:
            if token not in level:
                level[token] = (len(parents[-1]), {})
                parents[-1].append(parent)
                tokens[-1].append(token)
            parent, level = level[token]
            path.append(parent)
        rows[index], paths[index] = len(tries) - 1, path
    return _tensors(tokens, parents, rows, paths, pad_id)


def _new_nodes(trie: dict, prompt: list[int]) -> int:
    """Nodes that inserting `prompt` into `trie` would add."""
    level = trie
    for depth, token in enumerate(prompt):
        if token not in level:
            return len(prompt) - depth
        level = level[token][1]
    return 0


def _tensors(tokens: list[list[int]], parents: list[list[int]], rows: list[int], paths: list[list[int]],
             pad_id: int) -> Packing:
    width = max(len(p) for p in parents)
    ids = torch.full((len(parents), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(parents), width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(len(parents), 1, 1)
    for row, row_parents in enumerate(parents):
        ids[row, : len(row_parents)] = torch.tensor(tokens[row])
        for column, parent in enumerate(row_parents):  # parents come before their children
            if parent >= 0:
                mask[row, column] |= mask[row, parent]
                positions[row, column] = positions[row, parent] + 1
    return Packing(ids, positions, mask.unsqueeze(1), rows, paths, sum(map(len, parents)))

"""Prompts that share prefixes, packed as token trees so that every shared token is encoded once.

Written by hand because transformers encodes each row of a batch in full, while a Flow batch is mostly shared
prefixes: a question's rollouts all start with its prompt and the main chain's partial answer, and its Stop
prompts repeat the question and every partial answer once per chunk boundary. Here each packed row holds the
trie of several prompts. A 4D attention mask lets a token see only its ancestors and its position id is its depth,
so the last token of every prompt computes exactly what it would compute alone (up to float rounding), while
the row costs only its distinct tokens.

A prompt may also start with tokens whose KV is already cached (`cached`): a row then holds only prompts with the
same cached prefix, that prefix's KV is the row's past (columns 0..m-1), and the row's nodes see all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packing:
    ids: torch.Tensor
    """[rows, width] token ids of the nodes to encode (padding after each row's nodes)."""
    positions: torch.Tensor
    """[rows, width] each node's position in its prompt (0 = first token)."""
    mask: torch.Tensor
    """[rows, 1, width, past + width] True where a node may attend: the row's past, its ancestors and itself."""
    rows: list[int]
    """Row holding each prompt, in the caller's order."""
    paths: list[list[int]]
    """Key column of each of a prompt's tokens (past columns first, then `past + node column`), in order."""
    past: list[tuple[int, int] | None]
    """Per row: the cached prefix (key, length) whose KV fills the row's past columns, or None."""
    past_width: int
    """Past columns (the longest cached prefix); 0 when nothing is cached."""
    nodes: int
    """Tokens actually encoded (each shared one once)."""


@dataclass
class _Row:
    tokens: list[int]
    parents: list[int]
    """The parent column of each node (-1 for a root)."""
    past: tuple[int, int] | None


def pack(prompts: list[list[int]], row_tokens: int, pad_id: int,
         cached: list[tuple[int, int] | None] | None = None) -> Packing:
    """Pack prompts into trie rows of at most `row_tokens` nodes (a longer prompt gets a row of its own).

    `cached[i] = (key, m)`: the first m tokens of prompt i are cached under the integer `key` and are not encoded
    again (m < len(prompt): the last token is always encoded, its hidden state is what the caller reads).
    Prompts are inserted in sorted order so that the ones sharing a prefix land in the same row.
    """
    cached = cached or [None] * len(prompts)
    for prompt, hit in zip(prompts, cached):
        if hit is not None and not 0 < hit[1] < len(prompt):
            raise ValueError(f"a cached prefix must leave at least one token to encode, got {hit[1]} of "
                             f"{len(prompt)}")
        if not prompt:
            raise ValueError("cannot pack an empty prompt")
    # Rows over a cached prefix are cut at whichever limit pads least: every row is padded to the widest, so
    # packing two prompts that share no new tokens into one row can double the width every other row pays for.
    longest = max((len(p) - hit[1] for p, hit in zip(prompts, cached) if hit), default=row_tokens)
    limits = sorted({min(longest * k, row_tokens) for k in (1, 2, 4)} | {row_tokens})
    rows, where, columns = min((_rows(prompts, cached, row_tokens, limit) for limit in limits),
                               key=lambda packed: len(packed[0]) * max(len(r.parents) for r in packed[0]))
    return _tensors(rows, where, columns, pad_id)


def _rows(prompts: list[list[int]], cached: list[tuple[int, int] | None], row_tokens: int,
          past_row_tokens: int) -> tuple[list[_Row], list[int], list[list[int]]]:
    """Prompts inserted into trie rows in sorted order: a row holds prompts with the same cached prefix, up to
    `row_tokens` nodes (`past_row_tokens` over a cached prefix); per prompt, its row and its nodes' columns."""
    rows: list[_Row] = []
    tries: list[dict] = []  # per row: nested {token: (column, children)}
    where, columns = [0] * len(prompts), [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (cached[i] or (-1, 0), prompts[i]))
    for index in order:
        skip = cached[index][1] if cached[index] else 0
        suffix = prompts[index][skip:]
        limit = max(past_row_tokens if skip else row_tokens, len(suffix))
        if (not rows or rows[-1].past != cached[index]
                or len(rows[-1].parents) + _new_nodes(tries[-1], suffix) > limit):
            rows.append(_Row([], [], cached[index]))
            tries.append({})
        row, level, parent = rows[-1], tries[-1], -1
        for token in suffix:
            if token not in level:
                level[token] = (len(row.parents), {})
                row.parents.append(parent)
                row.tokens.append(token)
            parent, level = level[token]
            columns[index].append(parent)
        where[index] = len(rows) - 1
    return rows, where, columns


def _new_nodes(trie: dict, prompt: list[int]) -> int:
    """Nodes that inserting `prompt` into `trie` would add."""
    level = trie
    for depth, token in enumerate(prompt):
        if token not in level:
            return len(prompt) - depth
        level = level[token][1]
    return 0


def _tensors(rows: list[_Row], where: list[int], columns: list[list[int]], pad_id: int) -> Packing:
    width = max(len(r.parents) for r in rows)
    past_width = max((r.past[1] for r in rows if r.past), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    own = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)  # node -> the row's nodes it sees
    sees_past = torch.zeros((len(rows), width, past_width), dtype=torch.bool)
    for r, row in enumerate(rows):
        skip = row.past[1] if row.past else 0
        ids[r, : len(row.tokens)] = torch.tensor(row.tokens)
        sees_past[r, : len(row.tokens), :skip] = True
        for column, parent in enumerate(row.parents):  # parents come before their children
            positions[r, column] = positions[r, parent] + 1 if parent >= 0 else skip
            if parent >= 0:
                own[r, column] |= own[r, parent]
    paths = [list(range(rows[r].past[1] if rows[r].past else 0)) + [past_width + c for c in cols]
             for r, cols in zip(where, columns)]
    mask = torch.cat([sees_past, own], dim=-1).unsqueeze(1)
    return Packing(ids, positions, mask, where, paths, [r.past for r in rows], past_width,
                   sum(len(r.parents) for r in rows))

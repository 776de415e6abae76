"""KVStore: longest cached prefix, entries superseded by their extensions, a token cap, weight fingerprints."""

from __future__ import annotations

import torch

from harness.generation.kv_store import KVStore, weights_fingerprint


def kv(length: int, value: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((1, length, 2), value), torch.full((1, length, 2), value))]


def test_longest_prefix_leaves_the_last_token_to_encode():
    store = KVStore(max_tokens=100)
    store.add((1, 2, 3, 4), kv(4))
    store.add((1, 5), kv(2))
    assert store.matches([[1, 2, 3, 4, 9], [1, 2, 3, 4], [1, 5, 6], [7, 1], [1]]) == [
        (0, 4), (0, 3), (1, 2), None, None]


def test_an_extension_supersedes_its_prefixes_and_the_cap_evicts_the_oldest():
    store = KVStore(max_tokens=6)
    store.add((1, 2), kv(2))
    store.add((1, 2, 3), kv(3))
    assert [e.tokens for e in store.entries] == [(1, 2, 3)]
    store.add((4, 5, 6, 7), kv(4))
    assert [e.tokens for e in store.entries] == [(4, 5, 6, 7)]
    store.add(tuple(range(10)), kv(10))  # larger than the cap: not kept
    assert [e.tokens for e in store.entries] == [(4, 5, 6, 7)]


def test_past_lays_each_hit_out_zero_padded():
    store = KVStore(max_tokens=100)
    store.add((1, 2, 3), kv(3, 1.0))
    store.add((4, 5), kv(2, 2.0))
    (keys, values), = store.past([(1, 1), None, (0, 3)], width=3)
    assert keys.shape == (3, 1, 3, 2)
    assert keys[:, 0, :, 0].tolist() == [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert torch.equal(keys, values)


def test_fingerprint_changes_with_an_in_place_update_and_check_forgets():
    model = torch.nn.Linear(2, 2)
    store = KVStore(max_tokens=100)
    store.check(weights_fingerprint(model))
    store.add((1, 2), kv(2))
    store.check(weights_fingerprint(model))
    assert len(store.entries) == 1
    with torch.no_grad():
        model.weight.add_(1.0)
    store.check(weights_fingerprint(model))
    assert store.entries == []

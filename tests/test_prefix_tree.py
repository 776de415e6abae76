"""Packed prompt trees: each shared token once, and each prompt's last token sees exactly its own prompt."""

from __future__ import annotations

import pytest
import torch

from harness.generation.prefix_tree import pack

PROMPTS = [[5, 6, 7, 8], [5, 6, 9], [5, 6, 7], [4, 6], [5, 6, 7, 8]]


def test_shared_prefixes_are_one_node_and_paths_spell_each_prompt():
    packing = pack(PROMPTS, row_tokens=64, pad_id=0)
    # distinct prefixes: 5 6 7 8 / 5 6 9 / 4 6 -> nodes 5,6,7,8,9,4,6
    assert packing.nodes == 7
    assert packing.ids.shape == (1, 7)
    for prompt, row, path in zip(PROMPTS, packing.rows, packing.paths):
        assert packing.ids[row, path].tolist() == prompt
        assert packing.positions[row, path].tolist() == list(range(len(prompt)))
    # a prompt that is a prefix of another ends at an inner node; duplicates share every node
    assert packing.paths[2] == packing.paths[0][:3]
    assert packing.paths[4] == packing.paths[0]


def test_each_node_attends_to_exactly_its_ancestors():
    packing = pack(PROMPTS, row_tokens=64, pad_id=0)
    for row, path in zip(packing.rows, packing.paths):
        for depth, column in enumerate(path):
            seen = packing.mask[row, 0, column].nonzero()[:, 0].tolist()
            assert sorted(seen) == sorted(path[: depth + 1])


def test_rows_split_at_row_tokens_and_padding_sees_only_itself():
    packing = pack(PROMPTS, row_tokens=4, pad_id=0)
    assert packing.ids.shape[0] > 1
    assert all(packing.ids[row, path].tolist() == prompt
               for prompt, row, path in zip(PROMPTS, packing.rows, packing.paths))
    width = packing.ids.shape[1]
    for row in range(packing.ids.shape[0]):
        used = {c for r, path in zip(packing.rows, packing.paths) if r == row for c in path}
        for column in set(range(width)) - used:
            assert packing.mask[row, 0, column].nonzero()[:, 0].tolist() == [column]
            assert packing.ids[row, column] == 0
    # a prompt longer than row_tokens still gets a row of its own
    long = pack([list(range(1, 10))], row_tokens=4, pad_id=0)
    assert long.paths[0] == list(range(9))


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="empty prompt"):
        pack([[1], []], row_tokens=8, pad_id=0)


def test_packed_forward_equals_each_prompt_alone(tiny_base):
    model, tok = tiny_base()
    prompts = [tok.encode(text, add_special_tokens=False)
               for text in ("What is 1+2?", "What is 1+2? It is", "What is 7*8?", "Hi", "What is 1+2?")]
    packing = pack(prompts, row_tokens=16, pad_id=tok.pad_token_id)
    assert packing.nodes < sum(map(len, prompts))
    mask = torch.zeros(packing.mask.shape).masked_fill(~packing.mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        logits = model(input_ids=packing.ids, attention_mask=mask, position_ids=packing.positions).logits
        for prompt, row, path in zip(prompts, packing.rows, packing.paths):
            alone = model(input_ids=torch.tensor([prompt])).logits[0, -1]
            torch.testing.assert_close(logits[row, path[-1]], alone, atol=1e-5, rtol=1e-5)


def test_cached_prefixes_are_a_rows_past_and_only_suffixes_are_encoded():
    prompts = [[5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 1], [4, 6]]
    cached = [(0, 3), (0, 3), (1, 2), None]
    packing = pack(prompts, row_tokens=64, pad_id=0, cached=cached)
    assert packing.past_width == 3
    assert packing.nodes == 2 + 1 + 2  # 8 and 9 after entry 0; 1 after entry 1; 4 6 uncached
    assert packing.past == [None, (0, 3), (1, 2)]  # rows sorted: uncached first, then by cache key
    for prompt, hit, row, path in zip(prompts, cached, packing.rows, packing.paths):
        skip = hit[1] if hit else 0
        assert packing.past[row] == hit
        assert path[:skip] == list(range(skip))  # the cached tokens are the row's first past columns
        new = [c - packing.past_width for c in path[skip:]]
        assert packing.ids[row, new].tolist() == prompt[skip:]
        assert packing.positions[row, new].tolist() == list(range(skip, len(prompt)))
        # the last token sees exactly its own cached prefix and its own new tokens
        seen = packing.mask[row, 0, new[-1]].nonzero()[:, 0].tolist()
        assert seen == path


def test_a_cached_prefix_must_leave_a_token_to_encode():
    with pytest.raises(ValueError, match="at least one token"):
        pack([[1, 2]], row_tokens=8, pad_id=0, cached=[(0, 2)])


def test_rows_over_a_cached_prefix_are_cut_where_padding_is_least():
    """Prompts over one cached prefix share a row where their new tokens overlap (one trace's Stop prompts at
    several boundaries) and take a row each where they do not, so no row is padded to a pair of unrelated ones."""
    apart = [[1, 2, 3, 10, 11, 12], [1, 2, 3, 20, 21, 22], [1, 2, 3, 30, 31, 32]]
    packing = pack(apart, row_tokens=64, pad_id=0, cached=[(0, 3)] * 3)
    assert packing.ids.shape == (3, 3) and packing.nodes == 9
    boundaries = [[1, 2, 3, 10, 11, 99], [1, 2, 3, 10, 11, 12, 13, 99], [1, 2, 3, 10, 11, 12, 13, 14, 15, 99]]
    packing = pack(boundaries, row_tokens=64, pad_id=0, cached=[(0, 3)] * 3)
    assert packing.ids.shape == (1, 9) and packing.nodes == 9  # 10 11 shared once, each ending 99 its own node

"""Compile-stage helpers: SFT targets end where the chat template ends a turn; the global batch is exact."""

from __future__ import annotations

import pytest

from harness.config.recipe import load_recipe
from harness.errors import RunError
from harness.modeling.families import family_tokenizer
from harness.stages.compile import per_device_batch, target_end_id, with_eos


@pytest.mark.parametrize(("family", "end"), [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"), ("phi3", "<|end|>")])
def test_targets_end_with_the_templates_end_of_turn(family, end):
    tok = family_tokenizer(family)
    recipe = load_recipe("tiny", [f"model.tiny.family={family}"])
    assert target_end_id(recipe, tok) == tok.convert_tokens_to_ids(end)  # Phi-3: <|end|>, not <|endoftext|>
    plain = load_recipe("tiny", [f"model.tiny.family={family}", "model.chat_template=false"])
    assert target_end_id(plain, tok) == tok.eos_token_id


def test_with_eos_keeps_a_generated_end_and_appends_one_otherwise():
    assert with_eos([5, 6, 9], eos=7, ends=[7, 9]) == [5, 6, 9]  # ended by another EOS id of the model
    assert with_eos([5, 6], eos=7, ends=[7, 9]) == [5, 6, 7]  # cut by Stop or max_chunks
    assert with_eos([], eos=7, ends=[7]) == [7]


def test_the_global_batch_is_split_evenly_over_processes():
    assert [per_device_batch(8, n) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(RunError, match="cannot be split evenly over 3 processes"):
        per_device_batch(8, 3)

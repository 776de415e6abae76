"""The offline stand-ins of the paper models: ids, templates, EOS, architecture, and a save/load round trip."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.config.recipe import TinyModel
from harness.modeling import models
from harness.modeling.families import CHARS, FAMILIES, family_model, family_tokenizer, generation_eos_ids

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]

VOCAB = {"chatml": (102, 102), "llama3": (128256, 128256), "phi3": (32011, 32064)}
"""(len(tokenizer), model vocabulary): Phi-3's embedding is padded past the tokenizer, as in the real model."""
ARCH = {"chatml": "LlamaForCausalLM", "llama3": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM"}
EOS = {"chatml": [2], "llama3": [128001, 128009], "phi3": [32000, 32001, 32007]}
SPECIAL_IDS = {  # (tokenizer eos, pad, bos)
    "chatml": (2, 0, None),
    "llama3": (128009, None, 128000),
    "phi3": (32000, 32000, 1),
}


@cache
def built(family: str):
    """One tokenizer and model per family for the whole module (the Llama-3 vocabulary is the slow part)."""
    tok = family_tokenizer(family)
    return tok, family_model(family, TinyModel(family=family), tok).eval()


def chars(tok, text: str) -> list[int]:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text), "normal text must be one token per character"
    return ids


def expected_prompt_ids(family: str, tok) -> list[int]:
    """The ids the [system, user] prompt plus generation prompt must tokenize to, built piece by piece."""
    if family == "chatml":
        start, end = 1, 2
        return ([start] + chars(tok, "system\nBe brief.") + [end] + chars(tok, "\n") + [start]
                + chars(tok, "user\n1+1?") + [end] + chars(tok, "\n") + [start] + chars(tok, "assistant\n"))
    if family == "llama3":
        bot, sh, eh, eot = 128000, 128006, 128007, 128009
        return ([bot, sh] + chars(tok, "system") + [eh] + chars(tok, "\n\nBe brief.") + [eot, sh]
                + chars(tok, "user") + [eh] + chars(tok, "\n\n1+1?") + [eot, sh] + chars(tok, "assistant") + [eh]
                + chars(tok, "\n\n"))
    user, end, assistant = 32010, 32007, 32001  # the system message is dropped, and there is no BOS
    return [user] + chars(tok, "\n1+1?") + [end] + chars(tok, "\n") + [assistant] + chars(tok, "\n")


def render(tok, messages=MESSAGES) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_tokenizes_to_the_special_ids(family):
    tok, _ = built(family)
    assert tok.encode(render(tok), add_special_tokens=False) == expected_prompt_ids(family, tok)


@pytest.mark.parametrize("family", FAMILIES)
def test_eos_pad_bos_ids(family):
    tok, model = built(family)
    assert generation_eos_ids(family) == EOS[family]
    assert model.generation_config.eos_token_id == EOS[family]
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == SPECIAL_IDS[family]
    eos, pad, _ = SPECIAL_IDS[family]
    assert model.generation_config.pad_token_id == (pad if pad is not None else eos)


@pytest.mark.parametrize("family", FAMILIES)
def test_skip_special_tokens_drops_specials(family):
    tok, _ = built(family)
    ids = tok.encode(render(tok), add_special_tokens=False)
    text = tok.decode(ids, skip_special_tokens=True)
    assert "<|" not in text and "1+1?" in text


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_and_vocabulary(family):
    tok, model = built(family)
    assert type(model).__name__ == ARCH[family]
    assert (len(tok), model.config.vocab_size) == VOCAB[family]
    ids = torch.tensor([tok.encode(render(tok), add_special_tokens=False)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], VOCAB[family][1])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip(family, tmp_path):
    tok, model = built(family)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded).__name__ == ARCH[family]
    assert loaded.config.vocab_size == VOCAB[family][1]
    assert loaded.generation_config.eos_token_id == EOS[family]
    assert loaded_tok.chat_template == tok.chat_template
    assert (loaded_tok.eos_token_id, loaded_tok.pad_token_id, loaded_tok.bos_token_id) == SPECIAL_IDS[family]
    assert loaded_tok.encode(render(loaded_tok), add_special_tokens=False) == expected_prompt_ids(family, tok)
    assert loaded_tok.all_special_ids == tok.all_special_ids


def test_phi3_drops_the_system_message():
    tok, _ = built("phi3")
    with_system = render(tok)
    assert with_system == render(tok, MESSAGES[1:]) == "<|user|>\n1+1?<|end|>\n<|assistant|>\n"
    assert "Be brief." not in with_system and "<|system|>" not in with_system


def test_llama3_bos_comes_from_the_template_only():
    tok, _ = built("llama3")
    prompt = render(tok)
    assert tok.encode(prompt, add_special_tokens=False).count(128000) == 1
    assert "<|end_header_id|>\n\nx<|eot_id|>" in render(tok, [{"role": "user", "content": "  x \n"}])  # trimmed
    # Like the real tokenizer, encoding with special tokens prepends BOS again: the harness must not do that.
    assert tok.encode(prompt)[:2] == [128000, 128000]


def test_chatml_keeps_the_tiny_models_layout():
    """The `tiny` model's ids (specials 0-3, then one id per printable character) stay what runs and caches hold."""
    tok = family_tokenizer("chatml")
    assert [tok.convert_ids_to_tokens(i) for i in range(4)] == ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    assert tok.encode("1+2", add_special_tokens=False) == [4 + CHARS.index(c) for c in "1+2"]
    assert (tok.pad_token_id, tok.eos_token_id, generation_eos_ids("chatml")) == (0, 2, [2])


@pytest.mark.parametrize("family", FAMILIES)
def test_warm_up_targets_end_with_the_templates_end_of_turn(family):
    tok = family_tokenizer(family)
    prompt, answer = models.chat_example(tok, "1+2?", "3")
    assert prompt == tok.encode(render(tok, [{"role": "user", "content": "1+2?"}]), add_special_tokens=False)
    end = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "phi3": "<|end|>"}[family]
    assert answer == tok.encode("3", add_special_tokens=False) + [tok.convert_tokens_to_ids(end)]
    assert answer[-1] in generation_eos_ids(family)


def test_phi3_takes_an_all_linear_lora_and_generates():
    from peft import LoraConfig, get_peft_model

    tok = family_tokenizer("phi3")
    model = family_model("phi3", TinyModel(family="phi3", seed=1), tok)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    # Phi-3 fuses q/k/v and gate/up: all-linear must find the fused layers (and leave lm_head alone).
    wrapped = {name.split(".")[-2] for name, _ in peft_model.named_modules() if name.endswith(".lora_A")}
    assert wrapped == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    ids = torch.tensor([tok.encode(render(tok), add_special_tokens=False)])
    out = peft_model.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                                     do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="gpt2.*chatml, llama3, phi3"):
        family_tokenizer("gpt2")
    with pytest.raises(ValueError, match="gpt2"):
        generation_eos_ids("gpt2")

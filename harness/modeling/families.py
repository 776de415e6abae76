"""Tiny random-weight stand-ins of the paper models, built in-process with no download.

A "rehearsal" runs a GPU recipe's whole pipeline on a CPU with a model of the same architecture family, the same
chat template format, the same special-token ids and the same EOS ids as the real model, so that template, EOS and
special-token bugs show up before any GPU time is spent. Normal text is character-level (each printable character
one token); only the special tokens sit at the real models' ids.

- `chatml`: a plain Llama with a ChatML template (the `tiny` recipes' model).
- `llama3`: imitates meta-llama/Meta-Llama-3-8B-Instruct (LlamaForCausalLM, vocabulary 128256).
  Special-token layout: https://github.com/meta-llama/llama3/blob/main/llama/tokenizer.py
- `phi3`: imitates microsoft/Phi-3-medium-128k-instruct (Phi3ForCausalLM, vocabulary 32064 of which the tokenizer
  names 32011). Its chat template has no system role and silently drops system messages:
  https://github.com/ggml-org/llama.cpp/blob/master/tests/test-chat-template.cpp ("Phi-3-medium").
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerFast

if TYPE_CHECKING:
    from harness.config.recipe import TinyModel

FAMILIES: tuple[str, ...] = ("chatml", "llama3", "phi3")

CHARS: tuple[str, ...] = tuple(string.printable.replace("\x0b", "").replace("\x0c", ""))
"""The normal-text vocabulary: every printable character but vertical tab and form feed, one token each."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ (message['content'] | trim) + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Phi-3-medium's template: no BOS, no system branch (a system message renders as nothing), and every user turn
# already ends with the assistant header, so add_generation_prompt changes nothing.
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + '<|end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
)


def _llama3_specials() -> dict[int, str]:
    """Llama-3's 256 special tokens at 128000..128255, reserved ones named as in Meta's tokenizer."""
    named = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    named += ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    named += [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]
    return {128000 + i: tok for i, tok in enumerate(named)}


def _phi3_specials() -> dict[int, str]:
    """Phi-3's added tokens at 32000..32010."""
    names = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
             "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]
    return {32000 + i: tok for i, tok in enumerate(names)}


@dataclass(frozen=True)
class Family:
    """What a stand-in copies from its real model."""

    low_specials: tuple[str, ...]
    """Special tokens at ids 0.. (before the characters)."""
    high_specials: dict[int, str] = field(default_factory=dict)
    """Special tokens at their real (high) ids; the ids between the characters and these are filler."""
    bos: str | None = None
    eos: str = ""
    unk: str | None = None
    pad: str | None = None
    additional: tuple[str, ...] = ()
    """Specials passed to the tokenizer as additional_special_tokens (chatml only: the `tiny` model's layout)."""
    template: str = ""
    generation_eos: tuple[str, ...] = ()
    """Tokens whose ids go in generation_config.eos_token_id, in the real model's order."""
    bos_prefix: bool = False
    """Whether encode(add_special_tokens=True) prepends BOS (Llama-3's post-processor does)."""
    architecture: str = "llama"
    model_vocab: int | None = None
    """The model's vocabulary when the real one is padded past the tokenizer (Phi-3: 32064 > 32011)."""
    rope_theta: float | None = None
    rms_norm_eps: float | None = None


SPECS: dict[str, Family] = {
    "chatml": Family(
        low_specials=("<pad>", "<|im_start|>", "<|im_end|>", "<unk>"),
        eos="<|im_end|>", unk="<unk>", pad="<pad>", additional=("<|im_start|>",),
        template=CHATML_TEMPLATE, generation_eos=("<|im_end|>",),
    ),
    # Meta-Llama-3-8B-Instruct: tokenizer EOS <|eot_id|>, generation_config EOS [128001, 128009], no pad token
    # (harness.modeling.models.load_base pads with EOS), rms_norm_eps 1e-5. Its rope_theta of 500000 is left out: spread
    # over 32-dimensional heads it leaves a tiny character model almost blind to position, and it fails to learn
    # the arithmetic warm-up that a rehearsal needs (0 of 16 answers right, against 3 of 16 at the default 10000).
    "llama3": Family(
        low_specials=(), high_specials=_llama3_specials(),
        bos="<|begin_of_text|>", eos="<|eot_id|>",
        template=LLAMA3_TEMPLATE, generation_eos=("<|end_of_text|>", "<|eot_id|>"), bos_prefix=True,
        rms_norm_eps=1e-5,
    ),
    # Phi-3-medium-128k-instruct: tokenizer EOS and pad <|endoftext|>, generation_config EOS [32000, 32001, 32007].
    "phi3": Family(
        low_specials=("<unk>", "<s>", "</s>"), high_specials=_phi3_specials(),
        bos="<s>", eos="<|endoftext|>", unk="<unk>", pad="<|endoftext|>",
        template=PHI3_TEMPLATE, generation_eos=("<|endoftext|>", "<|assistant|>", "<|end|>"),
        architecture="phi3", model_vocab=32064, rope_theta=10000.0, rms_norm_eps=1e-5,
    ),
}


def family_spec(family: str) -> Family:
    """The family's spec; ValueError naming the known families for an unknown one."""
    if family not in SPECS:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return SPECS[family]


def _vocabulary(spec: Family) -> dict[str, int]:
    """Low specials, then the characters, then filler up to the first high special, then the high specials."""
    tokens = [*spec.low_specials, *CHARS]
    if spec.high_specials:
        first = min(spec.high_specials)
        # Filler stands for the real model's ordinary BPE tokens: plain vocabulary entries, not added tokens,
        # because ~128k added tokens make Llama-3's tokenizer take seconds to build, save and load.
        tokens += [f"<|filler_{i}|>" for i in range(len(tokens), first)]
        tokens += [spec.high_specials[i] for i in sorted(spec.high_specials)]
    return {tok: i for i, tok in enumerate(tokens)}


def family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A character-level tokenizer with the family's special tokens (at their real ids), chat template and EOS."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    spec = family_spec(family)
    vocab = _vocabulary(spec)
    # Byte-level BPE (Llama-3) never meets an unknown character and has no unk token; the stand-in maps characters
    # outside its alphabet (GSM8K's curly quotes, say) to a filler id rather than failing.
    fallback = spec.unk or next((t for t in vocab if t.startswith("<|filler_")), None)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=fallback))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    named = {spec.bos, spec.eos, spec.unk, spec.pad, *spec.additional}
    others = [t for t in (*spec.low_specials, *spec.high_specials.values()) if t not in named]
    # Added as special tokens so that they are matched whole in text and dropped by skip_special_tokens.
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in others])
    if spec.bos_prefix:
        bos_id = core.token_to_id(spec.bos)
        core.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos}:1 $B:1", special_tokens=[(spec.bos, bos_id)]
        )
    kwargs = {"pad_token": spec.pad, "eos_token": spec.eos, "bos_token": spec.bos, "unk_token": spec.unk}
    if spec.additional:
        kwargs["additional_special_tokens"] = list(spec.additional)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **kwargs)
    tok.chat_template = spec.template
    return tok


def generation_eos_ids(family: str) -> list[int]:
    """The ids the real model's generation_config lists as EOS."""
    spec = family_spec(family)
    vocab = _vocabulary(spec)
    return [vocab[t] for t in spec.generation_eos]


def _config(
    spec: Family, tiny: TinyModel, vocab_size: int, pad_id: int | None, eos_id: int, bos_id: int | None
) -> PretrainedConfig:
    """The transformers config of the family's architecture at the tiny sizes."""
    from transformers import LlamaConfig, Phi3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.hidden_size * 2,
        num_hidden_layers=tiny.layers,
        num_attention_heads=tiny.heads,
        num_key_value_heads=tiny.kv_heads,
        max_position_embeddings=4096,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=bos_id,
        tie_word_embeddings=False,
    )
    # Only set what the real model sets, so chatml's config stays what models.tiny_model builds.
    if spec.rope_theta is not None:
        common["rope_parameters"] = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if spec.rms_norm_eps is not None:
        common["rms_norm_eps"] = spec.rms_norm_eps
    if spec.architecture == "phi3":
        return Phi3Config(original_max_position_embeddings=4096, **common)
    return LlamaConfig(**common)


def family_model(family: str, tiny: TinyModel, tokenizer) -> torch.nn.Module:
    """A random model of the family's architecture (seeded by tiny.seed) with the real generation EOS ids."""
    from transformers import LlamaForCausalLM, Phi3ForCausalLM

    spec = family_spec(family)
    vocab_size = max(spec.model_vocab or 0, len(tokenizer))
    config = _config(spec, tiny, vocab_size, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    torch.manual_seed(tiny.seed)
    model = (Phi3ForCausalLM if spec.architecture == "phi3" else LlamaForCausalLM)(config)
    model.generation_config.eos_token_id = generation_eos_ids(family)
    pad = tokenizer.pad_token_id
    model.generation_config.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
    return model

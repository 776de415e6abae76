"""Shared fixtures: a private HARNESS_CACHE, no network, tiny models built in-process."""

from __future__ import annotations

import math
import os

import pytest
import torch
from scripted import EOS, scripted_ids, split_answer_prompt

# The tiny model gains nothing from threads, and on a busy 2-core machine torch's thread pool makes its small
# matmuls ~10x slower. One thread here, and in every `harness` subprocess a test starts (they inherit os.environ).
torch.set_num_threads(1)

# Tests that run on each device: the CPU in every run, CUDA under `-m gpu` (tox -e gpu) on a machine that has it.
# The CUDA case runs the same assertions: reads equal a plain forward, continuous equals phased, a killed run
# resumes to the uninterrupted one's bits, so a GPU machine checks what CI can only check on the CPU.
CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
on_each_device = pytest.mark.parametrize("device", DEVICES)


def on_cuda(test):
    """A test of the CUDA paths only: it runs under `-m gpu`, and is skipped where no CUDA device is."""
    for mark in CUDA:
        test = mark(test)
    return test

OFFLINE_ENV = {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(scope="session", autouse=True)
def harness_cache(tmp_path_factory):
    """Every test (and every subprocess) writes converted or warmed-up weights to a session tmp folder."""
    cache = tmp_path_factory.mktemp("harness-cache")
    hf_home = tmp_path_factory.mktemp("hf-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(cache))
        mp.setenv("HF_HOME", str(hf_home))
        for key, value in OFFLINE_ENV.items():
            mp.setenv(key, value)
        yield cache


@pytest.fixture
def tiny_recipe():
    """`tiny_recipe(*overrides)`: recipes/tiny.yaml with `key.sub=value` overrides."""
    from harness.config.recipe import load_recipe

    def make(*overrides: str):
        return load_recipe("tiny", list(overrides))

    return make


@pytest.fixture
def tiny_base():
    """A fresh random tiny Llama (no warm-up, no adapters) on `device` and its character tokenizer: ~0.1 s."""
    from harness.config.recipe import ModelConfig
    from harness.modeling.models import load_base

    def make(device: str = "cpu", **tiny):
        return load_base(ModelConfig(name="tiny", tiny=tiny), device)

    return make


@pytest.fixture
def tiny_peft(tiny_base):
    """A fresh random tiny Llama carrying zero-initialised `answer` and `stop` adapters, and its tokenizer."""
    from harness.config.recipe import LoraSpec
    from harness.modeling.models import with_adapters

    def make(dropout: float = 0.05, device: str = "cpu", **tiny):
        model, tok = tiny_base(device, **tiny)
        spec = LoraSpec(r=8, alpha=8, dropout=dropout)
        return with_adapters(model, {"answer": spec, "stop": spec}), tok

    return make


@pytest.fixture(scope="session")
def warm_tiny(harness_cache):
    """The recipe's warm-started tiny model, built once per session into HARNESS_CACHE (subprocesses reuse it)."""
    from harness.config.recipe import load_recipe
    from harness.modeling.models import load_base

    recipe = load_recipe("tiny", ["model.tiny.warmup_steps=300"])  # as test_online.MODEL_ARGS
    load_base(recipe.model)
    cached = list(harness_cache.glob("tiny-*.safetensors"))
    assert len(cached) == 1, cached
    return cached[0]


def perturb_adapter(model, name: str, seed: int = 0, scale: float = 0.5) -> None:
    """Give adapter `name` non-zero lora_B weights (seeded), so that it changes the model's outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if f"lora_B.{name}." in param_name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


@pytest.fixture
def perturb():
    return perturb_adapter


@pytest.fixture
def env_for_subprocess():
    """Environment of a `harness` subprocess: this one's (private cache, offline, one thread)."""
    return dict(os.environ)


class ScriptedBackend:
    """A fake generation backend with scripted outputs (implements harness.generation.backend.Backend).

    `chunks[question][partial answer text]` lists the chunks the Answer LLM writes after that partial answer: the
    k-th call for the same (adapter, question, partial answer) gets the k-th entry (the last one once exhausted).
    An entry ending in `<EOS>` ends with the EOS id. `stop[question][partial answer text]` is P(Yes) of the Stop
    LLM after that partial answer; a missing entry is an error. Every call is recorded.
    """

    EOS = EOS

    def __init__(self, tokenizer, prompter, chunks: dict[str, dict[str, list[str]]],
                 stop: dict[str, dict[str, float]], flow_cfg) -> None:
        self.tok, self.prompter, self.chunks, self.stop = tokenizer, prompter, chunks, stop
        self.flow_cfg = flow_cfg
        """The Flow's settings (its Stop template and Yes/No words)."""
        self.eos_token_ids = [tokenizer.eos_token_id]
        self.counts: dict[tuple, int] = {}
        self.generate_calls: list[tuple] = []
        self.stop_calls: list[tuple] = []
        self.updated: list[list[str]] = []

    def ids(self, text: str) -> list[int]:
        return scripted_ids(self.tok, text, self.eos_token_ids)

    def _answer_split(self, prompt: list[int]) -> tuple[str, str]:
        return split_answer_prompt(self.tok, self.prompter, self.chunks, prompt)

    def _stop_split(self, prompt: list[int]) -> tuple[str, str]:
        for question in self.stop:
            marked = self.prompter.spliced(self.flow_cfg.stop_prompt, [-1], question=question)
            cut = marked.index(-1)
            before, after = marked[:cut], marked[cut + 1 :]
            if prompt[:cut] == before and prompt[len(prompt) - len(after) :] == after:
                return question, self.tok.decode(prompt[cut : len(prompt) - len(after)])
        raise AssertionError(f"unscripted stop prompt {self.tok.decode(prompt)!r}")

    def generate(self, prompts, adapter, max_new_tokens, temperature, top_p=1.0, n=1, seed=0, stop=None):
        from harness.generation.backend import Sample, token_budgets

        out = []
        for prompt, budget in zip(prompts, token_budgets(max_new_tokens, len(prompts))):
            question, partial = self._answer_split(prompt)
            key = (adapter, question, partial)
            k = self.counts.get(key, 0)
            self.counts[key] = k + 1
            options = self.chunks[question][partial]
            text = options[min(k, len(options) - 1)]
            ids = self.ids(text)[:budget]
            self.generate_calls.append((adapter, question, partial, text))
            finished = bool(ids) and ids[-1] in self.eos_token_ids
            out.append([Sample(ids, [-1.0] * len(ids), finished) for _ in range(n)])
        return out

    def next_token_logprobs(self, prompts, adapter, token_ids):
        """Log P(Yes), log P(No) of the scripted P(Yes), so that both stop rules read it back."""
        words = (self.flow_cfg.stop_yes, self.flow_cfg.stop_no)
        assert list(token_ids) == [self.prompter.first_token(w) for w in words]
        rows = []
        for prompt in prompts:
            question, partial = self._stop_split(prompt)
            self.stop_calls.append((adapter, question, partial))
            yes = self.stop[question][partial]
            rows.append([math.log(yes), math.log1p(-yes)])
        return rows

    def reset_cache(self, adapter):
        pass

    def adapters_updated(self, names):
        self.updated.append(list(names))


@pytest.fixture
def scripted_backend():
    """The ScriptedBackend class (see its docstring)."""
    return ScriptedBackend

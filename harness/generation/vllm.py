"""The `vllm` backend: offline vLLM serving the base model plus both agents' adapters as LoRA requests.

Same protocol as the HF backend (token ids in, token ids and log-probs out), so a recipe can switch backends
without changing results beyond kernel numerics. The trainer keeps owning the adapters (a peft model); this
backend only sees them as saved folders:

- each adapter is saved with `save_pretrained(selected_adapters=[name])` into `workdir/{name}-v{version}` and
  served as `LoRARequest("{name}-v{version}", int_id, path)`;
- `adapters_updated(names)` saves a new version under a NEW int id and drops the old one, because vLLM keys
  prefix-cache blocks by LoRA id: reloading new weights under an old id could serve KV computed with the old
  weights;
- `adapter=None` sends no LoRA request, so the base weights serve it (the reference policy).

Log-probs: the engine runs with `logprobs_mode="processed_logprobs"`, so `Sample.logprobs` are log-probabilities
under the sampling distribution (after temperature and top-p), as HF's processed `scores` are; for greedy
requests no processing applies and they are the model's full-vocabulary log-softmax.

Next-token log-probs, exact: one greedy step with `max_tokens=1, logprobs=0, logprob_token_ids=ids` returns the
full-vocabulary log-softmax of the next-token logits at exactly those ids (not a top-k that may miss them, and not
renormalised like `allowed_token_ids` would be). The Yes probability is read off the Yes and No ids' log-probs
(`backend.yes_probability`).

Stop sequences: a one-id sequence is a vLLM `stop_token_ids` entry (vLLM keeps the stopping id at the end of the
output ids, as it does EOS). vLLM has no stop on a sequence of several ids, and its `stop` strings match decoded
text, so they would also stop where a merged token spells the same text without those ids; longer sequences are
therefore cut out of the returned ids after generation (exact, but such a request runs on to EOS, its budget or a
one-id stop before it is cut, so it costs what a request without them costs).

Engine process: vLLM V1 runs its engine core in a separate process by default, so scripts that build this
backend need an `if __name__ == "__main__":` guard; `VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps the engine in
this process instead (no guard needed, but on CPU vLLM then binds this process's threads and drops torch to
one intra-op thread, which slows a trainer running beside it).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from itertools import count
from pathlib import Path
from typing import Any

from harness.errors import RecipeError
from harness.generation.backend import Sample, StopSequences, prompt_seeds, temperatures, token_budgets

_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""Values vLLM accepts for max_lora_rank (vllm.config.lora.MaxLoRARanks)."""


def lora_rank_bound(rank: int) -> int:
    """Smallest max_lora_rank vLLM accepts that fits adapters of rank `rank`."""
    for allowed in _LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise RecipeError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {_LORA_RANKS[-1]}")


def shutdown(llm: Any) -> None:
    """Stop a `vllm.LLM`'s engine core (and its process), freeing its GPU memory now, not at garbage collection."""
    llm.llm_engine.engine_core.shutdown()


class VLLMBackend:
    """The Backend protocol over one offline `vllm.LLM`; adapters are LoRA requests, versioned by id."""

    def __init__(
        self,
        model_path: str,
        tokenizer,
        adapter_source: Any | None,
        dtype: str,
        max_lora_rank: int,
        workdir: Path | str,
        seed: int = 0,
        eos_token_ids: list[int] | None = None,
        **llm_kwargs: Any,
    ) -> None:
        """Start the engine on the base model folder and register the adapters of `adapter_source`.

        `model_path` must hold the base weights without LoRA (save them before wrapping with peft: peft
        injects its layers in place) and the tokenizer files (vLLM loads them, though only token ids cross
        this API). `tokenizer` is the harness tokenizer. `eos_token_ids` are the ids that end a generation (default:
        the tokenizer's EOS), as in the HF backend.
        `adapter_source` is the peft model carrying the named adapters (None: base model only, LoRA off).
        `workdir` receives the saved adapter versions (superseded ones are deleted).
        `llm_kwargs` go to `vllm.LLM` (e.g. `enforce_eager=True`, `max_model_len=...`) and override the
        defaults set here.
        """
        from vllm import LLM

        self.tokenizer = tokenizer
        self.eos_token_ids: list[int] = list(eos_token_ids or [tokenizer.eos_token_id])
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.adapter_source = adapter_source
        self.names: list[str] = sorted(getattr(adapter_source, "peft_config", {}) or {})
        self.prefill_tokens = 0
        """Prompt tokens sent so far (the benchmark reports the prefix-cache share of them)."""
        self.cached_tokens = 0
        """Of those, tokens vLLM served from its prefix cache."""

        kwargs: dict[str, Any] = {
            "model": model_path,
            "dtype": dtype,
            "seed": seed,
            "enable_prefix_caching": True,
            "logprobs_mode": "processed_logprobs",
        }
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # The CPU backend's default KV block is 128 tokens and the prefix cache shares whole blocks only, so
            # a Flow's prompts (a question and a few chunks) would share nothing; its kernels prefer multiples of 32.
            kwargs["block_size"] = 32
        if self.names:
            # vLLM refuses adapters above max_lora_rank: raise it to fit the peft configs' ranks.
            ranks = [max_lora_rank]
            for cfg in adapter_source.peft_config.values():
                ranks += [cfg.r, *(cfg.rank_pattern or {}).values()]
            # One slot per agent so switching Answer <-> Stop never evicts.
            kwargs.update(enable_lora=True, max_loras=max(2, len(self.names)),
                          max_lora_rank=lora_rank_bound(max(ranks)))
        kwargs.update(llm_kwargs)
        if kwargs["logprobs_mode"] not in ("processed_logprobs", "raw_logprobs"):
            raise ValueError("VLLMBackend needs log-probabilities, not logits: logprobs_mode must be "
                             "processed_logprobs or raw_logprobs")
        self.llm = LLM(**kwargs)

        self._ids = count(1)
        self._versions: dict[str, int] = {}
        self._requests: dict[str, Any] = {}
        for name in self.names:
            self._save(name)

    def _save(self, name: str) -> None:
        """Save adapter `name` as its next version and make that the one requests use."""
        from vllm.lora.request import LoRARequest

        version = self._versions.get(name, -1) + 1
        folder = self.workdir / f"{name}-v{version}"
        if folder.exists():
            shutil.rmtree(folder)
        self.adapter_source.save_pretrained(folder, selected_adapters=[name], save_embedding_layers=False)
        # peft writes a non-default adapter into a subfolder named after it.
        path = folder / name if (folder / name / "adapter_config.json").is_file() else folder
        if not (path / "adapter_config.json").is_file():
            raise RuntimeError(f"adapter {name!r}: no adapter_config.json under {folder}")
        old = self._requests.get(name)
        self._requests[name] = LoRARequest(f"{name}-v{version}", next(self._ids), str(path))
        self._versions[name] = version
        if old is not None:
            # Free the engine's copy and the files of the superseded version.
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(self.workdir / old.lora_name, ignore_errors=True)

    def lora_request(self, adapter: str | None) -> Any | None:
        """The LoRA request serving `adapter` now (None: the base model)."""
        if adapter is None:
            return None
        if adapter not in self._requests:
            raise ValueError(f"unknown adapter {adapter!r} (have {self.names})")
        return self._requests[adapter]

    def _run(self, prompts: list[list[int]], params: list[Any], adapter: str | None) -> list[Any]:
        """One batched engine call; outputs come back in prompt order."""
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    lora_request=self.lora_request(adapter), use_tqdm=False)
        self.prefill_tokens += sum(len(p) * sp.n for p, sp in zip(prompts, params))
        self.cached_tokens += sum(o.num_cached_tokens or 0 for o in outputs)
        return outputs

    def generate(
        self, prompts: list[list[int]], adapter: str | None, max_new_tokens: int | list[int],
        temperature: float | list[float], top_p: float = 1.0, n: int = 1, seed: int | list[int] = 0,
        stop: list[list[int]] | None = None,
    ) -> list[list[Sample]]:  # as Backend.generate
        """`n` continuations per prompt, each request at its own temperature and seed; stops only at `eos_token_ids`
        and
        the `stop` sequences, as the HF backend does (longer-than-one-id sequences: see the module docstring)."""
        from vllm import SamplingParams

        if not prompts:
            return []
        budgets = token_budgets(max_new_tokens, len(prompts))
        stops = StopSequences(stop)
        stop_ids = list(dict.fromkeys(self.eos_token_ids + [s[0] for s in stop or [] if len(s) == 1]))
        temps = temperatures(temperature, len(prompts))
        seeds = prompt_seeds(seed, len(prompts), n)
        params = [
            SamplingParams(
                # vLLM refuses n > 1 for greedy requests: draw once, copy below (as HF's n greedy copies are equal).
                n=n if t > 0 else 1,
                temperature=t if t > 0 else 0.0,
                top_p=top_p if t > 0 else 1.0,
                top_k=0,
                max_tokens=budget,
                seed=s if t > 0 else None,  # vLLM gives child j of a request the seed `seed + j`, as HF does
                logprobs=0,
                # vLLM would also stop at ids of its own choosing (generation_config): exactly ours, as in HF.
                ignore_eos=True,
                stop_token_ids=stop_ids,
                detokenize=False,
                skip_special_tokens=False,
            )
            for budget, t, s in zip(budgets, temps, seeds)
        ]
        out: list[list[Sample]] = []
        for request in self._run(prompts, params, adapter):
            samples = []
            for completion in sorted(request.outputs, key=lambda c: c.index):
                tokens = list(completion.token_ids)
                logprobs = [step[tok].logprob for tok, step in zip(tokens, completion.logprobs or [])]
                end = stops.first_end(tokens) if stops else None
                if end is not None:  # vLLM itself stops at one-id sequences only: cut at the first of any
                    tokens, logprobs = tokens[:end], logprobs[:end]
                finished = bool(tokens) and tokens[-1] in self.eos_token_ids
                samples.append(Sample(tokens, logprobs, finished, end is not None))
            if len(samples) < n:
                samples = [replace(samples[0], token_ids=list(samples[0].token_ids),
                                   logprobs=list(samples[0].logprobs)) for _ in range(n)]
            out.append(samples)
        return out

    def next_token_logprobs(self, prompts: list[list[int]], adapter: str | None,
                            token_ids: list[int]) -> list[list[float]]:
        """Exact full-vocabulary log-probs of the next token at `token_ids` (at most vLLM's
        MAX_LOGPROB_TOKEN_IDS = 128 distinct ids), from one greedy step."""
        from vllm import SamplingParams

        if not prompts or not token_ids:
            return [[] for _ in prompts]
        # Both fields: vLLM 0.20 returns log-probs only when `logprobs` is set (v1/engine/logprobs.py), later
        # versions read `num_logprobs`; `logprobs=0` adds only the sampled token, which is not read.
        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=0,
                                logprob_token_ids=list(dict.fromkeys(token_ids)), detokenize=False)
        out = []
        for request in self._run(prompts, [params] * len(prompts), adapter):
            step = request.outputs[0].logprobs[0]
            out.append([step[t].logprob for t in token_ids])
        return out

    def close(self) -> None:
        """Stop the engine (and its process) now rather than at interpreter exit, when logging is gone."""
        if getattr(self, "llm", None) is not None:
            shutdown(self.llm)
            self.llm = None

    def sleep(self) -> None:
        """Free the GPU memory of the engine (weights to CPU, KV cache dropped) while the trainer steps."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        """Take the GPU memory back; the prefix cache starts empty (its blocks were dropped)."""
        self.llm.wake_up()
        self.llm.reset_prefix_cache()

    def reset_cache(self, adapter: str | None) -> None:
        """Nothing to do: vLLM's prefix cache is keyed by tokens and LoRA id, so it never serves stale KV (and vLLM
        does not promise batch-invariant numerics that a reset would protect)."""

    def adapters_updated(self, names: list[str]) -> None:
        """Re-save these adapters from the peft model and serve them under new LoRA ids."""
        for name in names:
            if name not in self._requests:
                raise ValueError(f"unknown adapter {name!r} (have {self.names})")
            self._save(name)

"""The `hf` backend: transformers generate over one peft model carrying both agents' adapters.

Adapters are switched by name on the same weights, so an online update is visible to the next call at once.
Prompts are left-padded into one batch; sampling is seeded per call so a call is a pure function of
(weights, prompts, seed).

KV reuse: not done here. A Flow's next chunk re-encodes its prompt (question + partial answer) in one batched
prefill pass instead of carrying the previous chunk's cache (the cache could not be shared between the Answer
and Stop adapters anyway, and left-padded batches whose members finish at different lengths would need their
caches re-aligned). The Flow's speculative drafts already avoid most re-encoding (one generate call per draft,
not per chunk); `harness bench flow` prints `prefill_share`, the share of a chunk's generation time spent on that
prefill, i.e. what cache reuse could still save. At paper scale the vLLM backend reuses prefixes in its cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import GenerationConfig

from harness.backends.base import Sample, yes_from_logits


class HFBackend:
    def __init__(self, model: torch.nn.Module, tokenizer, max_batch: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.device = next(model.parameters()).device

    @contextlib.contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        """Run the block with adapter `name` active, or with adapters disabled (None = base model)."""
        if not hasattr(self.model, "peft_config"):
            if name is not None:
                raise ValueError(f"adapter {name!r} requested but the model has no adapters")
            yield
        elif name is None:
            with self.model.disable_adapter():
                yield
        else:
            if name not in self.model.peft_config:
                raise ValueError(f"unknown adapter {name!r} (have {sorted(self.model.peft_config)})")
            self.model.set_adapter(name)
            yield

    def batch(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ids, attention mask and position ids (so padding does not shift positions)."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        adapter: str | None,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        n: int = 1,
        seed: int = 0,
    ) -> list[list[Sample]]:
        out: list[list[Sample]] = []
        step = max(1, self.max_batch // n)
        with self.adapter(adapter):
            for start in range(0, len(prompts), step):
                out += self._generate(prompts[start : start + step], max_new_tokens, temperature, top_p, n,
                                      seed + start)
        return out

    def _generate(self, prompts, max_new_tokens, temperature, top_p, n, seed) -> list[list[Sample]]:
        ids, mask, _ = self.batch(prompts)
        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=0 if sampling else None,
            num_return_sequences=n,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            return_dict_in_generate=True,
            output_scores=True,
        )
        torch.manual_seed(seed)
        result = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = result.sequences[:, ids.shape[1] :]
        logprobs = torch.stack([torch.log_softmax(s.float(), -1) for s in result.scores], dim=1)
        chosen = logprobs.gather(-1, new[:, : logprobs.shape[1]].unsqueeze(-1)).squeeze(-1)
        samples = []
        for row in range(new.shape[0]):
            tokens = new[row].tolist()
            finished = self.eos_token_id in tokens
            length = tokens.index(self.eos_token_id) + 1 if finished else len(tokens)
            samples.append(Sample(tokens[:length], chosen[row, :length].tolist(), finished))
        return [samples[i * n : (i + 1) * n] for i in range(len(prompts))]

    @torch.no_grad()
    def yes_probability(self, prompts: list[list[int]], adapter: str | None, yes_id: int, no_id: int,
                        rule: str = "yes_vs_no") -> list[float]:
        probs: list[float] = []
        with self.adapter(adapter):
            for start in range(0, len(prompts), self.max_batch):
                ids, mask, positions = self.batch(prompts[start : start + self.max_batch])
                # logits_to_keep=1: only the last position goes through the vocabulary head (the rest is waste)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    logits_to_keep=1).logits[:, -1]
                probs += yes_from_logits(logits, yes_id, no_id, rule).tolist()
        return probs

    def adapters_updated(self, names: list[str]) -> None:
        """Nothing to do: the adapters are trained in place on the same model object."""

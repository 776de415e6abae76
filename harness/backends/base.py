"""The protocol every generation backend implements: token ids in, token ids (and log-probs) out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Sample:
    token_ids: list[int]
    """Generated ids, including the EOS that ended it (if any)."""
    logprobs: list[float]
    """Log-probability of each generated token under the sampling distribution."""
    finished: bool
    """True when the sample ended with EOS (False: it hit max_new_tokens)."""


class Backend(Protocol):
    """Generation over a base model carrying named adapters ("answer", "stop"; None = the base model)."""

    eos_token_ids: list[int]
    """Every id that ends a generation (the tokenizer's EOS first, then generation_config's others)."""

    def generate(
        self,
        prompts: list[list[int]],
        adapter: str | None,
        max_new_tokens: int | list[int],
        temperature: float,
        top_p: float = 1.0,
        n: int = 1,
        seed: int = 0,
    ) -> list[list[Sample]]:
        """`n` continuations of each prompt, each at most `max_new_tokens` long (one budget for all prompts, or
        one per prompt); deterministic for a given seed and batch from a reset cache."""
        ...

    def yes_probability(self, prompts: list[list[int]], adapter: str | None, yes_id: int, no_id: int,
                        rule: str) -> list[float]:
        """P(Yes) for the next token of each prompt, from one forward pass (no sampling)."""
        ...

    def adapters_updated(self, names: list[str]) -> None:
        """Tell the backend that these adapters' weights changed (vLLM reloads them under a new id)."""
        ...

    def reset_cache(self, adapter: str | None) -> None:
        """Forget the KV kept from earlier calls with this adapter, so that what follows does not depend on them."""
        ...


def end_token_ids(tokenizer, model=None) -> list[int]:
    """The tokenizer's EOS, then every other EOS id of the model's generation_config (Llama-3 ends turns with
    <|eot_id|>, Phi-3 with <|end|>: both are listed there beside the tokenizer's own EOS)."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for extra in configured if isinstance(configured, (list, tuple)) else [configured]:
        if extra is not None and extra not in ids:
            ids.append(int(extra))
    return ids


def token_budgets(max_new_tokens: int | list[int], prompts: int) -> list[int]:
    """One token budget per prompt, each at least 1."""
    budgets = [max_new_tokens] * prompts if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != prompts or any(b < 1 for b in budgets):
        raise ValueError(f"need one max_new_tokens >= 1 per prompt ({prompts} prompts), got {max_new_tokens!r}")
    return budgets


def yes_from_logits(logits: torch.Tensor, yes_id: int, no_id: int, rule: str) -> torch.Tensor:
    """P(Yes) from next-token logits [batch, vocab]: over {Yes, No} (`yes_vs_no`) or the whole vocabulary."""
    logits = logits.float()
    if rule == "yes_vs_no":
        pair = torch.stack([logits[:, yes_id], logits[:, no_id]], dim=-1)
        return torch.softmax(pair, dim=-1)[:, 0]
    return torch.softmax(logits, dim=-1)[:, yes_id]

"""The protocol every generation backend implements: token ids in, token ids (and log-probs) out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Sample:
    token_ids: list[int]
    """Generated ids, including the EOS that ended it (if any)."""
    logprobs: list[float]
    """Log-probability of each generated token under the sampling distribution."""
    finished: bool
    """True when the sample ended with EOS (False: it hit max_new_tokens or a stop sequence)."""
    stopped: bool = False
    """True when the sample ended with one of the call's `stop` sequences (kept at the end of `token_ids`)."""


class Backend(Protocol):
    """Generation over a base model carrying named adapters ("answer", "stop"; None = the base model)."""

    eos_token_ids: list[int]
    """Every id that ends a generation (the tokenizer's EOS first, then generation_config's others)."""

    def generate(
        self,
        prompts: list[list[int]],
        adapter: str | None,
        max_new_tokens: int | list[int],
        temperature: float | list[float],
        top_p: float = 1.0,
        n: int = 1,
        seed: int | list[int] = 0,
        stop: list[list[int]] | None = None,
    ) -> list[list[Sample]]:
        """`n` continuations of each prompt, each at most `max_new_tokens` long (one budget for all prompts, or
        one per prompt) at `temperature` (one for all prompts, or one per prompt; 0 = greedy). Every continuation
        draws from its own random stream: continuation j of prompt i from `seed[i] + j` (an int `seed` gives prompt
        i the seed `seed + i * n`), so what a prompt gets depends on its seed, not on the other prompts of the call
        (up to the float rounding of batched kernels). A sample ends at EOS, at its budget, or right after the
        first generated ids that equal one of the `stop` sequences (matched in the generated ids only)."""
        ...

    def next_token_logprobs(self, prompts: list[list[int]], adapter: str | None,
                            token_ids: list[int]) -> list[list[float]]:
        """For each prompt, the full-vocabulary log-softmax of its next-token logits read at `token_ids`, from one
        forward pass (no sampling, no temperature)."""
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


class StopSequences:
    """A call's `stop` sequences, indexed by their last id: checking whether a sample ends with one is one lookup."""

    def __init__(self, stop: list[list[int]] | None) -> None:
        self.by_last: dict[int, list[tuple[int, ...]]] = {}
        for sequence in stop or []:
            if not sequence:
                raise ValueError("a stop sequence needs at least one id")
            self.by_last.setdefault(sequence[-1], []).append(tuple(sequence))

    def __bool__(self) -> bool:
        return bool(self.by_last)

    def ends(self, ids: list[int], end: int | None = None) -> bool:
        """Whether `ids[:end]` ends with one of the sequences."""
        end = len(ids) if end is None else end
        return end > 0 and any(end >= len(s) and tuple(ids[end - len(s) : end]) == s
                               for s in self.by_last.get(ids[end - 1], ()))

    def first_end(self, ids: list[int]) -> int | None:
        """Length of the shortest prefix of `ids` that ends with one of the sequences (None: no such prefix)."""
        return next((end for end in range(1, len(ids) + 1) if self.ends(ids, end)), None)


def temperatures(temperature: float | list[float], prompts: int) -> list[float]:
    """One sampling temperature per prompt (<= 0: greedy)."""
    values = [temperature] * prompts if isinstance(temperature, (int, float)) else list(temperature)
    if len(values) != prompts:
        raise ValueError(f"need one temperature per prompt ({prompts} prompts), got {temperature!r}")
    return values


def prompt_seeds(seed: int | list[int], prompts: int, n: int) -> list[int]:
    """One seed per prompt: the list as given, or `seed + i * n` for prompt i (continuation j adds j)."""
    seeds = [seed + i * n for i in range(prompts)] if isinstance(seed, int) else list(seed)
    if len(seeds) != prompts:
        raise ValueError(f"need one seed per prompt ({prompts} prompts), got {len(seeds)}")
    return seeds


def token_budgets(max_new_tokens: int | list[int], prompts: int) -> list[int]:
    """One token budget per prompt, each at least 1."""
    budgets = [max_new_tokens] * prompts if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != prompts or any(b < 1 for b in budgets):
        raise ValueError(f"need one max_new_tokens >= 1 per prompt ({prompts} prompts), got {max_new_tokens!r}")
    return budgets


def sigmoid(x: float) -> float:
    """softmax([a, b])[0] with x = a - b, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def yes_probability(backend: Backend, prompts: list[list[int]], adapter: str | None, yes_id: int, no_id: int,
                    rule: str = "yes_vs_no") -> list[float]:
    """P(Yes) for the next token of each prompt, from the two ids' full-vocabulary log-probs: over {Yes, No}
    (`yes_vs_no`: the softmax over the two log-probs, which equals the one over the two logits since the
    normaliser cancels) or over the whole vocabulary (`yes_prob`: exp of the Yes log-prob)."""
    if rule not in ("yes_vs_no", "yes_prob"):
        raise ValueError(f"unknown stop rule {rule!r}")
    rows = backend.next_token_logprobs(prompts, adapter, [yes_id, no_id])
    return [math.exp(yes) if rule == "yes_prob" else sigmoid(yes - no) for yes, no in rows]

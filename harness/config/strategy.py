"""The fields every strategy's config has (each method's own config, beside its code under harness/strategies/,
extends one of these)."""

from __future__ import annotations

from pydantic import Field

from harness.config.section import PromptTemplate, Section


class StrategyConfig(Section):
    """Fields every strategy has: how the policy is prompted and sampled."""

    answer_prompt: PromptTemplate
    """Prompt of the policy (the Answer LLM); its answer is appended as assistant tokens."""
    temperature: float = Field(0.7, ge=0.0)
    """Sampling temperature of the policy (0 = greedy)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""

    def agents(self) -> list[str]:
        """Names of the adapters this strategy trains, in a fixed order."""
        raise NotImplementedError

    def answer_budget(self) -> int:
        """Most tokens of one whole answer (the length of single-pass answers of the base model)."""
        raise NotImplementedError


class PolicyConfig(StrategyConfig):
    """A strategy with one trained adapter, `policy`, that writes answers in one pass."""

    max_new_tokens: int = Field(512, ge=1)
    """Most tokens of one answer."""

    def agents(self) -> list[str]:
        return ["policy"]

    def answer_budget(self) -> int:
        return self.max_new_tokens

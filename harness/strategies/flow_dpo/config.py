"""Settings of Flow-DPO (Deng & Mineiro, arXiv 2410.22304): the Flow's chunking and stopping, and its rollouts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from harness.config.section import PromptTemplate
from harness.config.strategy import StrategyConfig


class FlowDPOConfig(StrategyConfig):
    name: Literal["flow_dpo"] = "flow_dpo"
    """Flow-DPO: an Answer LLM writes chunks, a Stop LLM decides when the answer is done; one rollout from every
    node of the main chain makes node-level pairs for both."""
    chunk_size: int = Field(160, ge=1)
    """Most tokens the Answer LLM writes per chunk."""
    max_chunks: int = Field(6, ge=1)
    """Most chunks in one answer; the Flow ends after the last without asking Stop."""
    stop_rule: Literal["yes_vs_no", "yes_prob"] = "yes_vs_no"
    """`yes_vs_no`: P(Yes) renormalised over {Yes, No}; `yes_prob`: P(Yes) over the whole vocabulary."""
    stop_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Stop when the Yes probability exceeds this."""
    stop_yes: str = "Yes"
    """Text whose first token is the Stop LLM's Yes."""
    stop_no: str = "No"
    """Text whose first token is the Stop LLM's No."""
    speculative: bool = False
    """Sample the rest of the budget in one pass and cut it into chunks (same distribution, fewer calls; but a Stop
    yes throws the rest away, and with the backends' KV reuse chunk by chunk is rarely slower)."""
    eos_ends_flow: bool = True
    """An Answer chunk ending in EOS ends the Flow without a Stop decision (the Answer LLM cannot go on)."""
    stop_prompt: PromptTemplate
    """Prompt of the Stop LLM; must contain `{partial_answer}`."""
    rollouts_per_node: int = Field(1, ge=1)
    """Alternative continuations drawn at every node of the main chain."""
    max_resample_tries: int = Field(4, ge=1)
    """Tries to draw an alternative chunk that differs from the original."""

    @model_validator(mode="after")
    def _placeholders(self) -> FlowDPOConfig:
        if "{question}" not in self.answer_prompt.user:
            raise ValueError("answer_prompt.user must contain {question}")
        if "{partial_answer}" not in self.stop_prompt.user or "{question}" not in self.stop_prompt.user:
            raise ValueError("stop_prompt.user must contain {question} and {partial_answer}")
        return self

    def agents(self) -> list[str]:
        return ["answer", "stop"]

    def answer_budget(self) -> int:
        return self.chunk_size * self.max_chunks

"""Settings of instance-level DPO: a whole correct answer against a whole wrong one per question (the baseline of
MCTS-DPO's Table 1 and SCDPO's Table 2, and what TRL's online DPO trains)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.config.strategy import PolicyConfig


class NaiveDPOConfig(PolicyConfig):
    name: Literal["naive_dpo"] = "naive_dpo"
    """Instance-level DPO: sample answers, pair correct ones against wrong ones."""
    samples: int = Field(4, ge=2)
    """Answers sampled per question (the solved answer is not one of them, so pairs never reuse the progressive-
    validation sample)."""
    pairs_per_question: int = Field(1, ge=1)
    """Most (correct, wrong) pairs made per question, each answer used at most once."""

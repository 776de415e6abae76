"""Settings of Step-Controlled DPO (Lu et al., arXiv 2407.00782): naive pairs from sampled answers, plus negatives
that follow a correct answer up to a step and then go wrong at a rising temperature."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from harness.config.strategy import PolicyConfig


class StepControlledConfig(PolicyConfig):
    name: Literal["step_controlled"] = "step_controlled"
    """Step-Controlled DPO: naive (correct, wrong) answer pairs and step-controlled pairs that share a correct
    prefix, so the loss covers only what follows the cut."""
    samples: int = Field(8, ge=1)
    """Answers sampled per question at `temperature` (the solved answer is not one of them); the naive pairs and
    the correct answer that is cut come from them."""
    naive_pairs: int = Field(1, ge=0)
    """Most (correct, wrong) whole-answer pairs per question, each answer used at most once (0: step pairs only)."""
    filter_words: list[str] = ["error", "apolog"]
    """A correct answer whose lower-cased text contains one of these is never chosen nor cut."""
    step_delimiters: list[str] = ["\n"]
    """A step ends after every token whose text contains one of these."""
    schedule: Literal["paper", "code"] = "paper"
    """Temperature of the n-th new step of a continuation: `paper` 1.1 + 0.05 n, `code` 1.1 + 0.1 n; both capped
    at 1.4."""
    cut: Literal["random", "every"] = "random"
    """Where a correct answer is cut: `random` draws `negatives_per_question` distinct steps; `every` continues from
    every step and keeps the first `negatives_per_question` negatives by step."""
    negatives_per_question: int = Field(1, ge=0)
    """Most step-controlled pairs per question (0: naive pairs only)."""
    max_tries: int = Field(4, ge=1)
    """Continuations from one cut, one after another until one ends wrong; a cut whose tries all end correct gives
    no pair."""

    @model_validator(mode="after")
    def _question_placeholder(self) -> StepControlledConfig:
        if "{question}" not in self.answer_prompt.user:
            raise ValueError("answer_prompt.user must contain {question}")
        if not self.step_delimiters or not all(self.step_delimiters):
            raise ValueError("step_delimiters must hold at least one non-empty string")
        return self

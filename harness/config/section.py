"""Building blocks shared by every recipe section: the strict base class, LoRA settings, prompt templates.

They live apart from `recipe.py` so that each strategy's config module (beside its code, under
harness/strategies/) can use them without importing the whole recipe schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, docstrings describe fields."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class LoraSpec(Section):
    r: int = 8
    """LoRA rank."""
    alpha: int = 8
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = 0.05
    """LoRA dropout."""
    targets: list[str] | Literal["all-linear"] = "all-linear"
    """Modules that get LoRA; `all-linear` is every linear layer but the output head."""


class PromptTemplate(Section):
    model_config = ConfigDict(**Section.model_config, frozen=True)  # hashable: prompt ids are cached per template

    system: str | None = None
    """System message (chat template) or preamble (plain text); None for none."""
    user: str
    """User message; `{question}` (and `{partial_answer}` where a template splices in generated ids) are filled
    in."""

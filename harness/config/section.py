"""Building blocks shared by every recipe section: the strict base class, LoRA settings, prompt templates.

They live apart from `recipe.py` so that each strategy's config module (beside its code, under
harness/strategies/) can use them without importing the whole recipe schema.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, docstrings describe fields, and a number field
    refuses a boolean (pydantic would read `questions: true`, or YAML's `yes`, as 1)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        for key, value in data.items() if isinstance(data, dict) else ():
            field = cls.model_fields.get(key)
            if isinstance(value, bool) and field is not None and _numeric(field.annotation):
                raise ValueError(f"{key}: {value!r} is a boolean, not a number")
        return data


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


def _numeric(annotation: Any) -> bool:
    """Whether a field takes a number and no boolean: `int`, `float`, or a union of them with None or str."""
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return bool(set(options) & {int, float}) and bool not in options

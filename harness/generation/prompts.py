"""Prompt token ids built from the recipe's templates.

Only template text is tokenized here. Generated answer tokens are spliced in as ids and never decoded and
re-tokenized: a template holding `{partial_answer}` (the Flow's Stop prompt, MCTS-DPO's self-evaluation prompt)
becomes `prefix ids + answer ids + suffix ids`.

Some chat templates have no system role (Phi-3-medium's drops a system message without a word, Gemma's raises):
then the system text is folded into the first user turn, `system_folded` says so (the run records it in
provenance), and every rendered prompt is checked to still carry the system text.
"""

from __future__ import annotations

from functools import lru_cache

from harness.config.section import PromptTemplate
from harness.errors import RecipeError

_MARK = "\u2063PARTIAL\u2063"  # an invisible separator no template uses; split on it before tokenizing


class Prompter:
    def __init__(self, tokenizer, answer_template: PromptTemplate, chat_template: bool) -> None:
        self.tokenizer = tokenizer
        self.answer_template = answer_template
        self.chat_template = chat_template
        self._parts = lru_cache(maxsize=4096)(self._split)
        self.system_folded = chat_template and not self._template_keeps_system()
        """The chat template has no system role: system text is put at the start of the user turn."""

    def first_token(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise RecipeError(f"{text!r} encodes to no token")
        return ids[0]

    def _template_keeps_system(self) -> bool:
        """Whether the tokenizer's chat template renders a system message (some drop it or raise on it)."""
        probe = "\u2063SYSTEM\u2063"
        messages = [{"role": "system", "content": probe}, {"role": "user", "content": "u"}]
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role may raise (jinja's raise_exception)
            return False
        return probe in text

    def render(self, template: PromptTemplate, **fields: str) -> str:
        """The prompt text up to where the assistant starts writing."""
        user = template.user.format(**fields)
        if not self.chat_template:
            return f"{template.system}\n\n{user}" if template.system else user
        if template.system and self.system_folded:
            messages = [{"role": "user", "content": f"{template.system}\n\n{user}"}]
        else:
            messages = [{"role": "system", "content": template.system}] if template.system else []
            messages.append({"role": "user", "content": user})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if template.system and template.system.strip() not in text:
            raise RecipeError(f"the chat template dropped the system text {template.system[:60]!r} of a prompt")
        return text

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_prompt(self, question: str) -> list[int]:
        """Ids the policy (Answer LLM) continues; its partial answer is appended to them as ids."""
        return self.encode(self.render(self.answer_template, question=question))

    def _split(self, template: PromptTemplate, fields: tuple[tuple[str, str], ...]) -> tuple[list[int], list[int]]:
        text = self.render(template, partial_answer=_MARK, **dict(fields))
        before, after = text.split(_MARK)
        return self.encode(before), self.encode(after)

    def spliced(self, template: PromptTemplate, answer_ids: list[int], **fields: str) -> list[int]:
        """Ids of `template` with the answer's ids where `{partial_answer}` stands (the other fields as text)."""
        before, after = self._parts(template, tuple(sorted(fields.items())))
        return before + answer_ids + after

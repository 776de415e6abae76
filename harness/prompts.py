"""Prompt token ids for the two agents, built from the recipe's templates.

Only template text is tokenized here. Generated answer tokens are spliced in as ids and never decoded and
re-tokenized: the Stop prompt is `prefix ids + partial answer ids + suffix ids`.

Some chat templates have no system role (Phi-3-medium's drops a system message without a word, Gemma's raises):
then the system text is folded into the first user turn, `system_folded` says so (the run records it in
provenance), and every rendered prompt is checked to still carry the system text.
"""

from __future__ import annotations

from functools import lru_cache

from harness.recipe import FlowConfig, PromptTemplate

_MARK = "\u2063PARTIAL\u2063"  # an invisible separator no template uses; split on it before tokenizing


class Prompter:
    def __init__(self, tokenizer, flow: FlowConfig, chat_template: bool) -> None:
        self.tokenizer = tokenizer
        self.flow = flow
        self.chat_template = chat_template
        self.yes_id = self.first_token(flow.stop_yes)
        self.no_id = self.first_token(flow.stop_no)
        if self.yes_id == self.no_id:
            raise ValueError(f"flow.stop_yes {flow.stop_yes!r} and flow.stop_no {flow.stop_no!r} share a first token")
        self._stop_parts = lru_cache(maxsize=4096)(self._split_stop_prompt)
        self.system_folded = chat_template and not self._template_keeps_system()
        """The chat template has no system role: system text is put at the start of the user turn."""

    def first_token(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ValueError(f"{text!r} encodes to no token")
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
            raise ValueError(f"the chat template dropped the system text {template.system[:60]!r} of a prompt")
        return text

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_prompt(self, question: str) -> list[int]:
        """Ids the Answer LLM continues; its partial answer is appended to them as ids."""
        return self.encode(self.render(self.flow.answer_prompt, question=question))

    def _split_stop_prompt(self, question: str) -> tuple[list[int], list[int]]:
        text = self.render(self.flow.stop_prompt, question=question, partial_answer=_MARK)
        before, after = text.split(_MARK)
        return self.encode(before), self.encode(after)

    def stop_prompt(self, question: str, answer_ids: list[int]) -> list[int]:
        """Ids the Stop LLM reads; its next token is Yes or No."""
        before, after = self._stop_parts(question)
        return before + answer_ids + after

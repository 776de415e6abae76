"""Prompts: the system text survives templates without a system role (folded into the user turn, and said so)."""

from __future__ import annotations

import pytest

from harness.families import family_tokenizer
from harness.prompts import Prompter
from harness.recipe import FlowConfig, PromptTemplate

SYSTEM = "You are a helpful math assistant. Explain your reasoning, then solve the problem."


def flow() -> FlowConfig:
    return FlowConfig(answer_prompt=PromptTemplate(system=SYSTEM, user="{question}"),
                      stop_prompt=PromptTemplate(system="Answer Yes or No.",
                                                 user="Problem: {question}\nCandidate: {partial_answer}\nCorrect?"))


def test_phi3_template_drops_system_so_it_is_folded_into_the_user_turn():
    tok = family_tokenizer("phi3")
    assert SYSTEM not in tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                  {"role": "user", "content": "1+1?"}], tokenize=False)
    prompter = Prompter(tok, flow(), chat_template=True)
    assert prompter.system_folded
    text = prompter.render(prompter.flow.answer_prompt, question="1+1?")
    assert text == f"<|user|>\n{SYSTEM}\n\n1+1?<|end|>\n<|assistant|>\n"
    stop = tok.decode(prompter.stop_prompt("1+1?", tok.encode("2", add_special_tokens=False)))
    assert stop.startswith("<|user|>\nAnswer Yes or No.\n\nProblem: 1+1?\nCandidate: 2")


@pytest.mark.parametrize("family", ["llama3", "chatml"])
def test_templates_with_a_system_role_keep_it(family):
    tok = family_tokenizer(family)
    prompter = Prompter(tok, flow(), chat_template=True)
    assert not prompter.system_folded
    text = prompter.render(prompter.flow.answer_prompt, question="1+1?")
    assert SYSTEM in text and f"{SYSTEM}\n\n1+1?" not in text


def test_a_template_that_raises_on_a_system_message_is_folded_too():
    tok = family_tokenizer("chatml")
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}assistant: ")
    prompter = Prompter(tok, flow(), chat_template=True)
    assert prompter.system_folded
    assert prompter.render(prompter.flow.answer_prompt, question="2+2?") == f"user: {SYSTEM}\n\n2+2?\nassistant: "


def test_a_template_that_loses_the_system_text_anyway_is_an_error():
    tok = family_tokenizer("chatml")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"  # keeps no content at all
    prompter = Prompter(tok, flow(), chat_template=True)
    with pytest.raises(ValueError, match="dropped the system text"):
        prompter.render(prompter.flow.answer_prompt, question="2+2?")

"""Prompts: the system text survives templates without a system role (folded into the user turn, and said so)."""

from __future__ import annotations

import pytest

from harness.config.section import PromptTemplate
from harness.generation.prompts import Prompter
from harness.modeling.families import family_tokenizer

SYSTEM = "You are a helpful math assistant. Explain your reasoning, then solve the problem."
ANSWER = PromptTemplate(system=SYSTEM, user="{question}")
STOP = PromptTemplate(system="Answer Yes or No.", user="Problem: {question}\nCandidate: {partial_answer}\nCorrect?")


def test_phi3_template_drops_system_so_it_is_folded_into_the_user_turn():
    tok = family_tokenizer("phi3")
    assert SYSTEM not in tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                  {"role": "user", "content": "1+1?"}], tokenize=False)
    prompter = Prompter(tok, ANSWER, chat_template=True)
    assert prompter.system_folded
    text = prompter.render(ANSWER, question="1+1?")
    assert text == f"<|user|>\n{SYSTEM}\n\n1+1?<|end|>\n<|assistant|>\n"
    stop = tok.decode(prompter.spliced(STOP, tok.encode("2", add_special_tokens=False), question="1+1?"))
    assert stop.startswith("<|user|>\nAnswer Yes or No.\n\nProblem: 1+1?\nCandidate: 2")


@pytest.mark.parametrize("family", ["llama3", "chatml"])
def test_templates_with_a_system_role_keep_it(family):
    tok = family_tokenizer(family)
    prompter = Prompter(tok, ANSWER, chat_template=True)
    assert not prompter.system_folded
    text = prompter.render(ANSWER, question="1+1?")
    assert SYSTEM in text and f"{SYSTEM}\n\n1+1?" not in text


def test_a_template_that_raises_on_a_system_message_is_folded_too():
    tok = family_tokenizer("chatml")
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}assistant: ")
    prompter = Prompter(tok, ANSWER, chat_template=True)
    assert prompter.system_folded
    assert prompter.render(ANSWER, question="2+2?") == f"user: {SYSTEM}\n\n2+2?\nassistant: "


def test_a_template_that_loses_the_system_text_anyway_is_an_error():
    tok = family_tokenizer("chatml")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"  # keeps no content at all
    prompter = Prompter(tok, ANSWER, chat_template=True)
    with pytest.raises(ValueError, match="dropped the system text"):
        prompter.render(ANSWER, question="2+2?")

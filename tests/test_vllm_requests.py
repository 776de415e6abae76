"""What the vLLM backend asks vLLM for, checked without vLLM (a stand-in SamplingParams records the request): the
forms every supported version answers."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

from harness.generation.vllm import VLLMBackend


def test_a_stop_read_sets_both_logprob_fields(monkeypatch):
    """vLLM 0.20 returns no log-probs for `logprob_token_ids` unless `logprobs` is set too (its scheduler and
    v1/engine/logprobs.py check `sampling_params.logprobs is not None`); later versions read `num_logprobs`."""
    asked = []
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: asked.append(kw) or kw))
    step = {5: SimpleNamespace(logprob=-0.1), 7: SimpleNamespace(logprob=-2.5), 9: SimpleNamespace(logprob=-0.01)}
    backend = VLLMBackend.__new__(VLLMBackend)
    backend._run = lambda prompts, params, adapter: [
        SimpleNamespace(outputs=[SimpleNamespace(logprobs=[step])]) for _ in prompts]
    assert backend.next_token_logprobs([[1, 2], [3]], "stop", [5, 7]) == [[-0.1, -2.5], [-0.1, -2.5]]
    assert asked == [{"temperature": 0.0, "max_tokens": 1, "logprobs": 0, "logprob_token_ids": [5, 7],
                      "detokenize": False}]

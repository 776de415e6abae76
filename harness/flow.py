"""The Flow (Deng & Mineiro 2024): an Answer LLM writes a chunk, a Stop LLM decides whether to go on.

Written by hand because no library produces answers chunk by chunk with a second adapter deciding when to stop.
The Flow advances many partial answers at once (the main chains of several questions, or every rollout of one
question) so each phase is one batched backend call: all pending chunks, then all pending stop decisions.

Nodes of a trace: answer node i writes chunk i; stop node i decides after chunk i (absent after the last
allowed chunk and after a chunk that ended in EOS when `eos_ends_flow`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from harness.backends.base import Backend
from harness.grading import grade
from harness.prompts import Prompter
from harness.recipe import FlowConfig


@dataclass
class Trace:
    """One answer produced by the Flow, as token ids with chunk boundaries."""

    question: str
    gold: str
    task: str
    prompt_ids: list[int]
    chunks: list[list[int]] = field(default_factory=list)
    stop_probs: list[float | None] = field(default_factory=list)
    """P(Yes) asked after each chunk (None where Stop was not asked)."""
    decisions: list[bool | None] = field(default_factory=list)
    """Stop decision after each chunk (True = stop; None where Stop was not asked)."""
    end: str = ""
    """Why it ended: `stop`, `eos` or `max_chunks`."""
    text: str = ""
    chunk_texts: list[str] = field(default_factory=list)
    extracted: str | None = None
    correct: bool = False
    # Rollout bookkeeping: the next action and what it must do differently.
    pending: str = "chunk"
    forced_decision: bool | None = None
    avoid_chunk: list[int] | None = None
    tries_left: int = 0
    discarded_tokens: int = 0
    """Tokens drawn for alternatives that equalled the original chunk and were drawn again."""

    @property
    def answer_ids(self) -> list[int]:
        return [t for chunk in self.chunks for t in chunk]

    @property
    def done(self) -> bool:
        return self.pending == "done"

    def to_dict(self) -> dict:
        return {
            "chunks": self.chunks,
            "chunk_texts": self.chunk_texts,
            "stop_probs": self.stop_probs,
            "decisions": self.decisions,
            "end": self.end,
            "text": self.text,
            "extracted": self.extracted,
            "correct": self.correct,
        }


@dataclass
class FlowStats:
    generate_seconds: float = 0.0
    stop_seconds: float = 0.0
    tokens: int = 0
    """Answer tokens generated."""
    stop_calls: int = 0
    """Stop decisions made."""


class Flow:
    def __init__(self, backend: Backend, prompter: Prompter, cfg: FlowConfig,
                 answer_adapter: str | None = "answer", stop_adapter: str | None = "stop") -> None:
        self.backend = backend
        self.prompter = prompter
        self.cfg = cfg
        self.answer_adapter = answer_adapter
        self.stop_adapter = stop_adapter
        self.stats = FlowStats()

    def start(self, question: str, gold: str, task: str) -> Trace:
        return Trace(question=question, gold=gold, task=task, prompt_ids=self.prompter.answer_prompt(question))

    def branch(self, trace: Trace, node: tuple[str, int], tries: int) -> Trace:
        """A rollout that shares the trace's prefix up to `node` and takes another action there."""
        kind, i = node
        if kind == "answer":
            keep, pending = i, "chunk"
        else:
            keep, pending = i + 1, "stop"
        alt = Trace(question=trace.question, gold=trace.gold, task=trace.task, prompt_ids=trace.prompt_ids,
                    chunks=[list(c) for c in trace.chunks[:keep]], stop_probs=trace.stop_probs[:i],
                    decisions=trace.decisions[:i], pending=pending)
        if kind == "answer":
            alt.avoid_chunk, alt.tries_left = trace.chunks[i], tries
        else:
            alt.stop_probs.append(None)
            alt.decisions.append(None)
            alt.forced_decision = not trace.decisions[i]
        return alt

    def run(self, traces: list[Trace], seed: int) -> list[Trace]:
        """Advance every trace to its end; phases alternate, each one batched backend call."""
        step = 0
        while True:
            writing = [t for t in traces if t.pending == "chunk"]
            if writing:
                self._write_chunks(writing, seed * 1000 + step)
            deciding = [t for t in traces if t.pending == "stop"]
            if deciding:
                self._decide(deciding)
            if not writing and not deciding:
                break
            step += 1
        for trace in traces:
            self._finish(trace)
        return traces

    def _write_chunks(self, traces: list[Trace], seed: int) -> None:
        start = time.perf_counter()
        prompts = [t.prompt_ids + t.answer_ids for t in traces]
        samples = self.backend.generate(prompts, self.answer_adapter, self.cfg.chunk_size, self.cfg.temperature,
                                        self.cfg.top_p, n=1, seed=seed)
        for trace, (sample,) in zip(traces, samples):
            self.stats.tokens += len(sample.token_ids)
            if trace.avoid_chunk is not None and sample.token_ids == trace.avoid_chunk and trace.tries_left > 1:
                trace.tries_left -= 1  # an alternative must differ from the original: draw again next round
                trace.discarded_tokens += len(sample.token_ids)
                continue
            trace.avoid_chunk = None
            trace.chunks.append(sample.token_ids)
            if sample.finished and self.cfg.eos_ends_flow:
                self._end(trace, "eos")
            elif len(trace.chunks) >= self.cfg.max_chunks:
                self._end(trace, "max_chunks")
            else:
                trace.pending = "stop"
        self.stats.generate_seconds += time.perf_counter() - start

    def _decide(self, traces: list[Trace]) -> None:
        start = time.perf_counter()
        asked = [t for t in traces if t.forced_decision is None]
        probs = []
        if asked:
            prompts = [self.prompter.stop_prompt(t.question, t.answer_ids) for t in asked]
            probs = self.backend.yes_probability(prompts, self.stop_adapter, self.prompter.yes_id,
                                                 self.prompter.no_id, self.cfg.stop_rule)
            self.stats.stop_calls += len(asked)
        for trace, p in zip(asked, probs):
            trace.stop_probs.append(p)
            trace.decisions.append(p > self.cfg.stop_threshold)
        for trace in traces:
            if trace.forced_decision is not None:  # a stop-node rollout: the opposite of the original decision
                trace.decisions[-1] = trace.forced_decision
                trace.forced_decision = None
            if trace.decisions[-1]:
                self._end(trace, "stop")
            else:
                trace.pending = "chunk"
        self.stats.stop_seconds += time.perf_counter() - start

    @staticmethod
    def _end(trace: Trace, why: str) -> None:
        trace.end, trace.pending = why, "done"

    def _finish(self, trace: Trace) -> None:
        tok = self.prompter.tokenizer
        trace.text = tok.decode(trace.answer_ids, skip_special_tokens=True)
        trace.chunk_texts = [tok.decode(c, skip_special_tokens=True) for c in trace.chunks]
        result = grade(trace.text, trace.gold, trace.task)
        trace.extracted, trace.correct = result.extracted, result.correct

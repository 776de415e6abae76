"""The Flow (Deng & Mineiro 2024): an Answer LLM writes a chunk, a Stop LLM decides whether to go on.

The Flow advances many partial answers at once (the main chains of several questions, or every rollout of one
question) so each phase is one batched backend call: all pending chunks, then all pending stop decisions.

Nodes of a trace: answer node i writes chunk i; stop node i decides after chunk i (absent after the last
allowed chunk and after a chunk that ended in EOS when `eos_ends_flow`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.errors import RecipeError
from harness.generation.backend import Backend, Sample, yes_probability
from harness.generation.prompts import Prompter
from harness.grading.grader import grade
from harness.run.seeds import seed_for
from harness.strategies.flow_dpo.config import FlowDPOConfig


@dataclass
class Trace:
    """One answer produced by the Flow, as token ids with chunk boundaries."""

    question: str
    gold: str
    task: str
    prompt_ids: list[int]
    seed: int = 0
    """This trace's random stream: draw d of chunk c samples with seed_for(seed, c, d), whatever the batch."""
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
    avoid: Trace | None = field(default=None, repr=False, compare=False)
    """The main chain whose chunk at this rollout's answer node must not be repeated (it may be written in the same
    call as the rollout's first draw)."""
    tries_left: int = 0
    redrawing: bool = False
    """A draw repeated the chunk to avoid: the next round draws all remaining tries at once."""
    draws: int = 0
    """Draws made so far for the chunk being written (a rollout redraws a chunk that repeats the original)."""
    discarded_tokens: int = 0
    """Tokens generated but not kept: redrawn alternatives, and a draft's tokens after the Stop LLM said yes."""
    draft: list[list[int]] = field(default_factory=list)
    """Chunks sampled ahead (speculative mode) and not yet passed by a stop decision."""
    draft_finished: bool = False
    """The draft's last chunk ends with EOS."""

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
    def __init__(self, backend: Backend, prompter: Prompter, cfg: FlowDPOConfig,
                 answer_adapter: str | None = "answer", stop_adapter: str | None = "stop") -> None:
        self.backend = backend
        self.prompter = prompter
        self.cfg = cfg
        self.answer_adapter = answer_adapter
        self.stop_adapter = stop_adapter
        self.stats = FlowStats()
        self.yes_id = prompter.first_token(cfg.stop_yes)
        self.no_id = prompter.first_token(cfg.stop_no)
        if self.yes_id == self.no_id:
            raise RecipeError(f"stop_yes {cfg.stop_yes!r} and stop_no {cfg.stop_no!r} share a first token")

    def stop_prompt(self, question: str, answer_ids: list[int]) -> list[int]:
        """Ids the Stop LLM reads after a partial answer; its next token is Yes or No."""
        return self.prompter.spliced(self.cfg.stop_prompt, answer_ids, question=question)

    def start(self, question: str, gold: str, task: str, seed: int) -> Trace:
        return Trace(question=question, gold=gold, task=task, prompt_ids=self.prompter.answer_prompt(question),
                     seed=seed)

    def branch(self, trace: Trace, node: tuple[str, int], tries: int, index: int = 0) -> Trace:
        """Rollout `index` from `node`: it shares the trace's prefix up to the node, takes another action there and
        draws from a stream of its own, derived from the trace's and the node's. An answer node may be the chunk
        the trace is about to write: the rollout's first draw then joins the same call and is compared after it."""
        kind, i = node
        if kind == "answer":
            keep, pending = i, "chunk"
        else:
            keep, pending = i + 1, "stop"
        alt = Trace(question=trace.question, gold=trace.gold, task=trace.task, prompt_ids=trace.prompt_ids,
                    seed=seed_for(trace.seed, "rollout", kind, i, index),
                    chunks=[list(c) for c in trace.chunks[:keep]], stop_probs=trace.stop_probs[:i],
                    decisions=trace.decisions[:i], pending=pending)
        if kind == "answer":
            alt.avoid, alt.tries_left = trace, tries
        else:
            alt.stop_probs.append(None)
            alt.decisions.append(None)
            alt.forced_decision = not trace.decisions[i]
        return alt

    def run(self, traces: list[Trace]) -> list[Trace]:
        """Advance every trace to its end; phases alternate, each one batched backend call.

        Decisions come first in a round, so that stop-node rollouts (whose decision is forced, no call) that must
        go on write their next chunk in the same call as every other trace. A run of new questions (no trace has
        a chunk yet) starts from an empty KV cache, so that its results never depend on earlier runs; rollouts
        reuse the KV of their main chains.
        """
        if not any(t.chunks for t in traces):
            self.reset_caches()
        while self.step(traces):
            pass
        return traces

    def reset_caches(self) -> None:
        """Forget the backend's kept KV of both agents, so that what follows never depends on earlier calls."""
        self.backend.reset_cache(self.answer_adapter)
        self.backend.reset_cache(self.stop_adapter)

    def step(self, traces: list[Trace], join: Callable[[], list[Trace]] | None = None) -> bool:
        """One round over the traces not yet done: every pending stop decision, then every pending chunk, each one
        batched backend call; a trace that ends is graded. `join`, called between the two, returns traces that
        enter the round there (rollouts from the nodes the decisions just passed, or from the chunks about to be
        written); their forced decisions take no call. False when there was nothing left to do."""
        deciding = [t for t in traces if t.pending == "stop"]
        if deciding:
            self._decide(deciding)
        joined = join() if join else []
        forced = [t for t in joined if t.pending == "stop"]
        if forced:
            self._decide(forced)
        writing = [t for t in traces + joined if t.pending == "chunk"]
        if writing:
            self._write_chunks(writing)
        for trace in {id(t): t for t in deciding + forced + writing}.values():  # decided and written: once
            if trace.done:
                self._finish(trace)
        return bool(deciding or writing or joined)

    def _write_chunks(self, traces: list[Trace]) -> None:
        """Sample the next chunk of every trace; in speculative mode, the whole remaining budget at once.

        Speculative drafting is exact in distribution: the Answer LLM's next chunk is conditioned on exactly the
        prompt + partial answer a continued sequence holds, so sampling the rest of the budget in one pass and
        cutting it into chunks draws from the same distribution as chunk-by-chunk calls, without re-encoding the
        prefix for every chunk. Tokens after the chunk where Stop says yes are discarded (and counted).
        """
        start = time.perf_counter()
        size = self.cfg.chunk_size
        budgets = [size * (self.cfg.max_chunks - len(t.chunks)) if self.cfg.speculative else size for t in traces]
        # A rollout whose first draw repeated the original chunk draws all its remaining tries at once and
        # takes the first that differs: the same distribution as redrawing one at a time, in one round.
        draws = [t.tries_left if t.redrawing else 1 for t in traces]
        prompts = [t.prompt_ids + t.answer_ids for t, k in zip(traces, draws) for _ in range(k)]
        seeds = [seed_for(t.seed, len(t.chunks), t.draws + d) for t, k in zip(traces, draws) for d in range(k)]
        samples = iter(self.backend.generate(prompts, self.answer_adapter,
                                             [b for b, k in zip(budgets, draws) for _ in range(k)],
                                             self.cfg.temperature, self.cfg.top_p, n=1, seed=seeds))
        drawn_per_trace = [[next(samples)[0] for _ in range(k)] for k in draws]
        # a rollout compares its draw with its main chain's chunk, which may have been drawn in this call
        for trace, drawn in sorted(zip(traces, drawn_per_trace), key=lambda pair: pair[0].avoid is not None):
            k = len(drawn)
            trace.draws += k
            chosen = self._first_acceptable(trace, drawn)
            self.stats.tokens += sum(len(d.token_ids) for d in drawn)
            trace.discarded_tokens += sum(len(d.token_ids) for d in drawn if d is not chosen)
            if chosen is None:
                trace.redrawing = True  # every draw repeated the original: draw again next round
                continue
            trace.avoid, trace.redrawing, trace.draws = None, False, 0
            ids = chosen.token_ids
            trace.draft = [ids[i : i + size] for i in range(0, len(ids), size)]
            trace.draft_finished = chosen.finished
            self._take_draft_chunk(trace)
        self.stats.generate_seconds += time.perf_counter() - start

    def _first_acceptable(self, trace: Trace, drawn: list[Sample]) -> Sample | None:
        """The first draw a trace may keep: for a rollout, one whose first chunk differs from the original's
        (its last try is kept either way, and then yields no pair)."""
        avoid = trace.avoid.chunks[len(trace.chunks)] if trace.avoid is not None else None
        for sample in drawn:
            if avoid is None or trace.tries_left <= 1 or sample.token_ids[: self.cfg.chunk_size] != avoid:
                return sample
            trace.tries_left -= 1
        return None

    def _take_draft_chunk(self, trace: Trace) -> None:
        """Move the draft's next chunk into the answer; end the trace or ask Stop next."""
        trace.chunks.append(trace.draft.pop(0))
        if not trace.draft and trace.draft_finished and self.cfg.eos_ends_flow:
            self._end(trace, "eos")
        elif len(trace.chunks) >= self.cfg.max_chunks:
            self._end(trace, "max_chunks")
        else:
            trace.pending = "stop"

    def _boundaries(self, trace: Trace) -> list[list[int]]:
        """Partial answers Stop must judge: now, and after each draft chunk that would not end the Flow."""
        out = [trace.answer_ids]
        count = len(trace.chunks)
        for j, chunk in enumerate(trace.draft):
            count += 1
            last = j == len(trace.draft) - 1
            if count >= self.cfg.max_chunks or (last and trace.draft_finished and self.cfg.eos_ends_flow):
                break
            out.append(out[-1] + chunk)
        return out

    def _decide(self, traces: list[Trace]) -> None:
        """All stop decisions of all traces (every draft boundary included) in one batched forward pass."""
        start = time.perf_counter()
        asked = [(t, self._boundaries(t)) for t in traces if t.forced_decision is None]
        prompts = [self.stop_prompt(t.question, answer) for t, bounds in asked for answer in bounds]
        probs = iter(yes_probability(self.backend, prompts, self.stop_adapter, self.yes_id, self.no_id,
                                     self.cfg.stop_rule) if prompts else [])
        self.stats.stop_calls += len(prompts)
        per_trace = {id(t): [next(probs) for _ in bounds] for t, bounds in asked}
        for trace in traces:
            trace_probs = iter(per_trace.get(id(trace), []))
            while True:
                if trace.forced_decision is not None:  # a stop-node rollout: the opposite of the original decision
                    trace.decisions[-1], trace.forced_decision = trace.forced_decision, None
                else:
                    p = next(trace_probs)
                    trace.stop_probs.append(p)
                    trace.decisions.append(p > self.cfg.stop_threshold)
                if trace.decisions[-1]:
                    self._end(trace, "stop")
                    break
                if not trace.draft:
                    trace.pending = "chunk"
                    break
                self._take_draft_chunk(trace)
                if trace.done:
                    break
        self.stats.stop_seconds += time.perf_counter() - start

    @staticmethod
    def _end(trace: Trace, why: str) -> None:
        trace.discarded_tokens += sum(len(c) for c in trace.draft)
        trace.draft = []
        trace.end, trace.pending = why, "done"

    def _finish(self, trace: Trace) -> None:
        tok = self.prompter.tokenizer
        trace.text = tok.decode(trace.answer_ids, skip_special_tokens=True)
        trace.chunk_texts = [tok.decode(c, skip_special_tokens=True) for c in trace.chunks]
        result = grade(trace.text, trace.gold, trace.task)
        trace.extracted, trace.correct = result.extracted, result.correct

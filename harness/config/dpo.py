"""Settings of the DPO learner, shared by every strategy (the `online.dpo` recipe block)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.config.section import Section


class DPOConfig(Section):
    beta: float = Field(1.0, gt=0.0)
    """DPO beta."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """Conservative-DPO label smoothing (0: plain DPO); a pair that carries its own (MCTS-DPO's visit-count
    smoothing) uses that instead."""
    optimizer: Literal["adam", "adamw"] = "adam"
    """Optimizer of each adapter."""
    lr: float = Field(5e-6, ge=0.0)
    """Learning rate (0: the learner steps but nothing moves, which switches learning off)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """Weight decay (adamw only)."""
    update: Literal["per_question", "accumulate", "after_stream"] = "accumulate"
    """When an agent learns: `per_question` steps on each question's own pairs right after it (Flow-DPO's
    real-time updates; at most `batch_pairs` per step), `accumulate` waits until `batch_pairs` pairs are queued,
    `after_stream` collects every pair of the stream first and then trains `epochs` passes over them (SCDPO's
    offline recipe; the stream's curves are then all measured before any update)."""
    batch_pairs: int = Field(32, ge=1)
    """Pairs per optimizer step of one adapter (`accumulate`, `after_stream`), or the most pairs one step takes
    (`per_question`)."""
    epochs: int = Field(1, ge=1)
    """Passes over the collected pairs (`after_stream` only)."""
    grad_clip: float = Field(1.0, gt=0.0)
    """Gradient-norm clipping."""
    reference: Literal["base", "snapshot"] = "base"
    """DPO reference: `base` = adapters disabled (the starting policy for zero-initialised LoRA); `snapshot` = a
    frozen copy of the agent's adapter, refreshed every `reference_refresh_every` optimizer steps."""
    reference_refresh_every: int | None = Field(None, ge=1)
    """Optimizer steps between snapshot refreshes (None: the copy taken at the start stays frozen)."""
    agents: list[str] | None = None
    """Agents that learn from their pairs (None: every agent of the strategy)."""

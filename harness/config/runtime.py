"""The `runtime` section: placement and performance (devices, memory shares, batch sizes, workers). It is kept out of
the recipe hash, so a run resumes after a memory setting changes; provenance records what a run started with."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from harness.config.section import Section


class VLLMRuntime(Section):
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    """Share of each GPU's memory the vLLM engine may hold (weights, KV cache, activations); vLLM refuses to start
    when less than this share is free, so lower it when the training copy shares the GPU."""
    max_model_len: int | None = Field(None, ge=1)
    """Longest prompt + generation vLLM reserves KV for (None: the model's own, 131,072 for Phi-3-medium-128k)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs one vLLM engine spreads the model over."""
    enforce_eager: bool = False
    """No CUDA graphs (starts faster, decodes slower, less memory)."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Most sequences vLLM schedules at once (None: vLLM's default)."""
    sleep_during_updates: bool = False
    """Put the engine to sleep (weights to CPU, KV cache freed) while DPO steps run, to free GPU memory for them."""
    eval_data_parallel_size: int = Field(1, ge=1)
    """Copies of the model lm-eval's vllm backend evaluates on, each on `tensor_parallel_size` GPUs of its own
    (lm-eval's `data_parallel_size`, run on Ray: needs the `ray` extra)."""


class HFRuntime(Section):
    max_batch: int = Field(64, ge=1)
    """Sequences the HF backend decodes (or Stop prompts it reads) together."""
    row_tokens: int = Field(256, ge=8)
    """Tokens per packed prompt-tree row of the HF backend."""
    kv_store_tokens: int = Field(16384, ge=0)
    """Tokens of KV the HF backend keeps across calls per adapter (0: none)."""


class RuntimeConfig(Section):
    """Placement and performance only, left out of the recipe hash: a run resumes after a change here (recorded in
    provenance). None of it changes what the recipe computes: every prompt samples from its own seed, so batch
    sizes, schedules and workers change only the float rounding of batched kernels (and the device, its
    arithmetic)."""

    device: str = "auto"
    """Device of the training copy (and of HF generation): `auto` (cuda when available), `cpu` or `cuda:N`. vLLM
    generates on the first `tensor_parallel_size` visible GPUs, so `cuda:1` puts training beside it, not on it.
    SFT runs after the engine is closed, on the first visible GPU (each rank's own under `accelerate launch`)."""
    dpo_micro_batch_tokens: int = Field(8192, ge=1)
    """Padded tokens per DPO forward/backward (chosen and rejected rows together); a step accumulates gradients
    over as many micro-batches as it needs. A pair longer than this is a micro-batch of its own."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass of DPO steps (memory for time)."""
    curves_batch: int = Field(64, ge=1)
    """Questions whose frozen and zero-shot answers are generated together, ahead of the training loop (those
    curves never change during the stream, and every question keeps its own seed, so the batch size does not
    change them)."""
    schedule: Literal["continuous", "phased"] = "continuous"
    """How the online loop orders a group's generation: `continuous` starts a strategy's exploration as soon as its
    answer has passed where it starts (the Flow's rollout at a node, beside the main chains still being written),
    all in shared forward passes; `phased` writes the answers, then explores. The same traces either way."""
    generation_workers: int = Field(1, ge=1)
    """Generation workers (Ray actors, one per device) the online stage shards each group over, by question; 1:
    in-process, no Ray. Each CUDA worker asks Ray for one GPU (`tensor_parallel_size` of them under vLLM); the
    training copy stays on `device` in the driver."""
    ray_address: str | None = None
    """Address of a running Ray cluster (`ray start --head` prints it); None: start Ray on this node."""
    vllm: VLLMRuntime = Field(default_factory=VLLMRuntime)
    """vLLM engine settings (generation backend and lm-eval's vllm model)."""
    hf: HFRuntime = Field(default_factory=HFRuntime)
    """HF backend settings."""
    metrics: list[Literal["tensorboard", "wandb"]] = []
    """Metric sinks fed from the same records as the run folder's logs (TensorBoard event files under RUN/logs/;
    W&B in offline mode); each needs its optional extra installed."""
    sft_devices: list[str] | None = Field(None, min_length=1)
    """Devices the compile stage's SFTs run on at once, each SFT in a process of its own, one per device at a time
    (`cuda:0`, `cuda:1`, ...; `cpu` entries run as separate CPU processes); None: every visible GPU when there are
    two or more and no distributed launch, else one SFT after another in the stage's own process."""

    @field_validator("sft_devices")
    @classmethod
    def _sft_devices_are_devices(cls, devices: list[str] | None) -> list[str] | None:
        bad = [d for d in devices or [] if d != "cpu" and not re.fullmatch(r"cuda:\d+", d)]
        if bad:
            raise ValueError(f"{bad} are not devices: each entry is `cpu` or `cuda:N`")
        return devices

"""Everything a stage needs to generate: the base model with the strategy's adapters, its tokenizer, a backend,
prompts.

The engine holds the largest share of GPU memory (the training copy, and vLLM's weights and KV cache): stages
that load other copies (SFT, evaluation) run after `close()`, so a run's peak is its largest stage, not the sum.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from harness.config.recipe import Recipe
from harness.errors import DataError
from harness.generation.backend import Backend, end_token_ids
from harness.generation.prompts import Prompter
from harness.modeling.models import base_model_folder, free_memory, load_base, with_adapters


def vllm_engine_kwargs(recipe: Recipe) -> dict:
    """`vllm.LLM` keyword arguments from the recipe's runtime section (None values left to vLLM)."""
    rt = recipe.runtime.vllm
    kwargs = {"gpu_memory_utilization": rt.gpu_memory_utilization, "max_model_len": rt.max_model_len,
              "tensor_parallel_size": rt.tensor_parallel_size, "enforce_eager": rt.enforce_eager,
              "max_num_seqs": rt.max_num_seqs, "enable_sleep_mode": rt.sleep_during_updates,
              "trust_remote_code": recipe.model.trust_remote_code or None}
    return {k: v for k, v in kwargs.items() if v is not None}


def make_backend(recipe: Recipe, model, tokenizer, base_folder: str | None) -> Backend:
    if recipe.backend == "hf":
        from harness.generation.hf import HFBackend

        rt = recipe.runtime.hf
        return HFBackend(model, tokenizer, max_batch=rt.max_batch, row_tokens=rt.row_tokens,
                         kv_store_tokens=rt.kv_store_tokens)
    from harness.generation.vllm import VLLMBackend

    rank = max(spec.r for spec in recipe.adapter_specs().values())
    workdir = Path(tempfile.mkdtemp(prefix="harness-lora-"))  # serving copies of the adapters, per process
    return VLLMBackend(base_folder, tokenizer, model, recipe.model.dtype, rank, workdir, seed=recipe.online.seed,
                       eos_token_ids=end_token_ids(tokenizer, model), **vllm_engine_kwargs(recipe))


class Engine:
    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        base, self.tokenizer = load_base(recipe.model, recipe.runtime.device)
        folder = base_model_folder(recipe.model, base, self.tokenizer) if recipe.backend == "vllm" else None
        self.model = with_adapters(base, recipe.adapter_specs())
        if recipe.runtime.gradient_checkpointing:
            # Only active in train mode (DPO steps); non-reentrant so LoRA inputs need no grad of their own.
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.base_folder = folder
        self._backend: Backend | None = None
        self.prompter = Prompter(self.tokenizer, recipe.strategy.answer_prompt, recipe.model.chat_template)

    @property
    def schedule(self) -> str:
        """How a strategy whose phases can overlap runs them (`runtime.schedule`: phased or continuous)."""
        return self.recipe.runtime.schedule

    @property
    def in_flight(self) -> int:
        """Questions a strategy may work on at once (`online.question_batch`)."""
        return self.recipe.online.question_batch

    @property
    def backend(self) -> Backend:
        """The generation backend, started on first use: a run that generates on workers
        (`runtime.generation_workers`) never starts one beside its training copy during the online stage."""
        if self._backend is None:
            self._backend = make_backend(self.recipe, self.model, self.tokenizer, self.base_folder)
        return self._backend

    @backend.setter
    def backend(self, backend: Backend) -> None:
        self._backend = backend

    def start_backend(self) -> Backend:
        """Start the generation backend now, not at its first use."""
        return self.backend

    def close_backend(self) -> None:
        """Stop the generation backend (vLLM gives its GPU memory back); the next use starts a fresh one, which
        serves the adapters as the model holds them then."""
        if self._backend is None:
            return
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()
        workdir = getattr(self._backend, "workdir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        self._backend = None
        free_memory()

    def check_prompts(self, records: list, source: str) -> None:
        """Refuse a question whose prompt leaves the answer no room in the model's context, naming its row: one
        oversized row would otherwise grow every batch it joins until memory runs out."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is None:
            return
        room = context - max(self.recipe.strategy.answer_budget(), self.base_answer_budget())
        template = len(self.prompter.answer_prompt(""))
        for record in records:
            # a token covers at least one byte, so only a question with more bytes than the room needs encoding
            if template + len(record.question.encode("utf-8")) > room:
                length = len(self.prompter.answer_prompt(record.question))
                if length > room:
                    raise DataError(f"data source {source!r}, row {record.id}: its prompt is {length} tokens, "
                                    f"more than the {room} the model's context ({context}) leaves beside an answer; "
                                    "shorten or remove the row")

    def base_answer_budget(self) -> int:
        """Length of the base model's one-pass answers (baseline stage, zero-shot curve)."""
        return self.recipe.baseline.max_new_tokens or self.recipe.strategy.answer_budget()

    def close(self) -> None:
        """Stop the generation engine and free the model's memory (GPU memory included)."""
        self.close_backend()
        self.model = None
        free_memory()

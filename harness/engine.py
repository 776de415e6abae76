"""Everything a stage needs to generate: the base model with both adapters, its tokenizer, a backend, prompts."""

from __future__ import annotations

import tempfile
from pathlib import Path

from harness.backends.base import Backend
from harness.data import Record
from harness.flow import Flow, Trace
from harness.models import base_model_folder, load_base, with_adapters
from harness.prompts import Prompter
from harness.recipe import Recipe


def make_backend(recipe: Recipe, model, tokenizer, base_folder: str | None) -> Backend:
    if recipe.backend == "hf":
        from harness.backends.hf import HFBackend

        return HFBackend(model, tokenizer)
    from harness.backends.vllm import VLLMBackend

    rank = max(recipe.adapters.answer.r, recipe.adapters.stop.r)
    workdir = Path(tempfile.mkdtemp(prefix="harness-lora-"))  # serving copies of the adapters, per process
    return VLLMBackend(base_folder, tokenizer, model, recipe.model.dtype, rank, workdir, seed=recipe.online.seed)


class Engine:
    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        base, self.tokenizer = load_base(recipe.model)
        folder = base_model_folder(recipe.model, base, self.tokenizer) if recipe.backend == "vllm" else None
        self.model = with_adapters(base, {"answer": recipe.adapters.answer, "stop": recipe.adapters.stop})
        self.backend = make_backend(recipe, self.model, self.tokenizer, folder)
        self.prompter = Prompter(self.tokenizer, recipe.flow, recipe.model.chat_template)

    def single_pass_budget(self) -> int:
        return self.recipe.baseline.max_new_tokens or self.recipe.flow.chunk_size * self.recipe.flow.max_chunks

    def single_pass(self, records: list[Record], temperature: float, seed: int,
                    adapter: str | None = None) -> list[Trace]:
        """Ordinary one-pass answers (the Flow with one chunk of the whole budget), graded."""
        cfg = self.recipe.flow.model_copy(update={"chunk_size": self.single_pass_budget(), "max_chunks": 1,
                                                  "temperature": temperature})
        flow = Flow(self.backend, self.prompter, cfg, adapter, None)
        return flow.run([flow.start(r.question, r.answer, r.task) for r in records], seed)

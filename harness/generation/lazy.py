"""The engine a pipeline holds across stages, built on first use (importing this module loads no torch)."""

from __future__ import annotations

from harness.config.recipe import Recipe
from harness.run.folder import RunDir


class LazyEngine:
    """Builds the model only when a stage that is not done yet needs it (a finished run re-runs in seconds), and
    closes it before stages that load their own copies (SFT, evaluation)."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self._engine = None

    def get(self, run: RunDir | None = None):
        """The engine, built on first use; `run` gets the facts of how prompts render in its provenance."""
        if self._engine is None:
            from harness.generation.engine import Engine  # torch and the model load only when a stage needs them

            self._engine = Engine(self.recipe)
        if run is not None:
            run.update_provenance(prompts={"system_folded_into_user_turn": self._engine.prompter.system_folded})
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

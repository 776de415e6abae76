"""Errors the CLI reports as one clear line, importable without torch (so `harness list` and friends stay fast)."""


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite DPO loss: training stops and the last good checkpoint is kept. Resuming replays the same
    seeded steps, so going past it needs a changed recipe in a new run folder."""

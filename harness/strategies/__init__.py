"""One module per paper method (its settings beside it in `<method>_config.py`), all behind the protocol of
`base.py`. `build_strategy` imports only the chosen one."""

from __future__ import annotations

from importlib import import_module

from harness.strategies.base import Strategy, StrategyConfig


def build_strategy(cfg: StrategyConfig, engine) -> Strategy:
    """The strategy named by `cfg` (the `STRATEGY` class of harness/strategies/<name>.py), generating with
    `engine`."""
    return import_module(f"harness.strategies.{cfg.name}").STRATEGY(cfg, engine)

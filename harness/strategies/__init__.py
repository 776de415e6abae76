"""Preference strategies: one folder per paper method (`<name>/config.py` its settings, `<name>/strategy.py` its
code exposing the class as `STRATEGY`), all behind the protocol of `base.py`; `one_pass.py` is the base of the
methods whose policy answers in one pass. `build_strategy` imports only the chosen method.

Written by hand because no library does chunk- or step-level online preference learning over several adapters:
the Flow, rollouts and their pair rules, the tree search and the step-controlled negatives live here.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config.strategy import StrategyConfig
    from harness.strategies.base import Strategy


def build_strategy(cfg: StrategyConfig, engine) -> Strategy:
    """The strategy named by `cfg` (the `STRATEGY` class of harness/strategies/<name>/strategy.py), generating with
    `engine`."""
    return import_module(f"harness.strategies.{cfg.name}.strategy").STRATEGY(cfg, engine)

"""Generation on several workers: Ray actors that each own a full engine and strategy (`runtime.generation_workers`).

No library dispatches a multi-adapter online strategy (the Flow's Answer and Stop agents, an MCTS search) to
generation workers and syncs the LoRA weights after each update. OpenRLHF and verl have the same shape for their
own trainers (a training process, vLLM engines as Ray actors, weights broadcast after each step:
https://github.com/OpenRLHF/OpenRLHF, https://github.com/volcengine/verl), not for a strategy behind
harness/strategies/base.py.

Design. The driver keeps the training copy (`engine.model`) and the DPO learners and, while the pool runs, no
generation engine of its own (its GPU memory goes to training); `WorkerPool` stands in for the strategy in the
online loop and speaks its protocol (`agents`, `solve`, `play`, `explore`, `timings`), and answers the zero-shot
curve:
- every actor builds `Engine(recipe)` and `build_strategy(...)` on its own device (on CUDA one GPU from Ray, or
  `tensor_parallel_size` under vLLM; on CPU a plain process), with the driver's torch thread count, so that it
  builds bit for bit the driver's base model (the tiny model's warm-up sums floats differently on other counts);
- a group is cut by question into contiguous shards, one per worker (a question's answer, rollouts and curves
  stay on one worker, so its prefix caches keep working), run in parallel and merged back in order. Every draw
  comes from its question's seed, so the results are one worker's, up to the float rounding of batched kernels;
- `adapters_updated(names)` puts the driver's weights of those adapters in Ray's object store once; every worker
  loads them and tells its own backend, and all have finished before the next dispatch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

from harness.config.recipe import Recipe
from harness.data.records import Record
from harness.errors import RunError
from harness.generation.engine import Engine
from harness.modeling.models import adapter_state, load_adapter_state, resolve_device
from harness.run.console import say
from harness.strategies import build_strategy
from harness.strategies.base import Explored, Play, Solution
from harness.strategies.one_pass import zero_shot

CLOSE_SECONDS = 60
"""How long `close` waits for the workers' engines to stop before it kills the actors anyway."""


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise RunError("runtime.generation_workers > 1 runs generation on Ray actors, but ray is not installed: "
                       "pip install 'harness[ray]' (or set runtime.generation_workers=1)") from err
    return ray


class GenerationWorker:
    """One Ray actor: an engine and the recipe's strategy on the actor's device."""

    def __init__(self, recipe: Recipe, threads: int) -> None:
        torch.set_num_threads(threads)  # before the model is built: its warm-up depends on the thread count
        self.engine = Engine(recipe)
        self.strategy = build_strategy(recipe.online.strategy, self.engine)

    def call(self, method: str, *args: Any) -> tuple[Any, dict[str, float], float]:
        """The strategy's `method`, the strategy's timings since the last call, and the seconds it took."""
        t0 = time.perf_counter()
        result = getattr(self.strategy, method)(*args)
        busy = time.perf_counter() - t0
        return result, self.strategy.timings(), busy

    def zero_shot(self, records: list[Record], seeds: list[int]) -> list[Solution]:
        return zero_shot(self.engine, self.engine.recipe.strategy, records, seeds)

    def load_adapters(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, state in states.items():
            load_adapter_state(self.engine.model, name, state)
        self.engine.backend.adapters_updated(sorted(states))

    def close(self) -> None:
        self.engine.close()


def worker_setup(recipe: Recipe) -> tuple[Recipe, dict]:
    """The recipe an actor builds its engine from, and the actor's Ray resources: on CUDA its own GPU(s), which
    Ray makes the only visible ones (so `cuda:N` becomes `cuda`); on a CPU one core."""
    if resolve_device(recipe.runtime.device).type != "cuda":
        return recipe, {"num_cpus": 1}
    gpus = recipe.runtime.vllm.tensor_parallel_size if recipe.backend == "vllm" else 1
    runtime = recipe.runtime.model_copy(update={"device": "cuda"})
    return recipe.model_copy(update={"runtime": runtime}), {"num_gpus": gpus}


def check_resources(needed: dict[str, float], have: dict[str, float]) -> None:
    """Ray would wait forever for actors that the cluster cannot hold: say so instead."""
    for resource, count in needed.items():
        kind = {"num_gpus": "GPU", "num_cpus": "CPU"}[resource]
        if count > have.get(kind, 0):
            raise RunError(f"runtime.generation_workers asks Ray for {count:g} {kind}s (a worker takes one CPU, or "
                           f"one GPU, runtime.vllm.tensor_parallel_size under vLLM) but the Ray cluster has "
                           f"{have.get(kind, 0):g}")


def shards(items: list, workers: int) -> list[list]:
    """`items` cut into at most `workers` contiguous, non-empty shards whose sizes differ by at most one."""
    count = min(workers, len(items))
    bounds = [len(items) * k // count for k in range(count + 1)] if count else [0]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


class WorkerPool:
    """The recipe's strategy on `runtime.generation_workers` Ray actors, behind the strategy protocol.

    Seconds: each dispatch's wall time is split in the proportions the workers spent (their seconds summed over
    workers, scaled by wall time / the workers' summed busy time), so `explore`'s `generate_seconds` and
    `rollout_seconds` add up to the group's wall time, as with one worker, and `timings()` are shares of it."""

    def __init__(self, recipe: Recipe, engine: Engine) -> None:
        self.ray = ray = import_ray()
        self.agents = recipe.online.strategy.agents()
        self.model = engine.model
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=recipe.runtime.ray_address, include_dashboard=False)
        self.actors: list = []
        self.pending: dict[str, float] = {}
        """Workers' timings not yet returned by `timings()`, in wall seconds."""
        try:
            setup, resources = worker_setup(recipe)
            workers = recipe.runtime.generation_workers
            check_resources({k: workers * v for k, v in resources.items()}, ray.cluster_resources())
            actor = ray.remote(GenerationWorker).options(**resources)
            self.actors = [actor.remote(setup, torch.get_num_threads()) for _ in range(workers)]
            self.adapters_updated(self.agents)  # a resumed run's checkpointed adapters
        except BaseException:
            self.close()
            raise

    def _run(self, method: str, calls: list[tuple]) -> tuple[list, float]:
        """The strategy's `method` on worker k with the arguments `calls[k]`, all at once: the results in order, and
        the scale from the workers' summed seconds to wall seconds (their timings join `pending`, scaled)."""
        t0 = time.perf_counter()
        replies = self.ray.get([actor.call.remote(method, *args) for actor, args in zip(self.actors, calls)])
        scale = (time.perf_counter() - t0) / max(sum(busy for _, _, busy in replies), 1e-9)
        for _, timings, _ in replies:
            for key, value in timings.items():
                self.pending[key] = self.pending.get(key, 0.0) + value * scale
        return [result for result, _, _ in replies], scale

    def solve(self, records: list[Record], seeds: list[int], trained: bool = True,
              temperature: float | None = None) -> list[Solution]:
        calls = [(r, s, trained, temperature) for r, s in zip(shards(records, len(self.actors)),
                                                               shards(seeds, len(self.actors)))]
        results, _ = self._run("solve", calls)
        return [solution for part in results for solution in part]

    def play(self, solutions: list[Solution]) -> list[Play]:
        results, _ = self._run("play", [(part,) for part in shards(solutions, len(self.actors))])
        return [play for part in results for play in part]

    def explore(self, records: list[Record], seeds: list[int]) -> Explored:
        calls = list(zip(shards(records, len(self.actors)), shards(seeds, len(self.actors))))
        results, scale = self._run("explore", calls)
        seconds: dict[str, float] = {}
        for part in results:
            for key, value in part.seconds.items():
                seconds[key] = seconds.get(key, 0.0) + value * scale
        return Explored([s for part in results for s in part.solutions], [p for part in results for p in part.plays],
                        seconds)

    def zero_shot(self, records: list[Record], seeds: list[int]) -> list[Solution]:
        """The zero-shot curve's answers (`answers.zero_shot`), sharded over the workers."""
        n = len(self.actors)
        parts = self.ray.get([actor.zero_shot.remote(r, s)
                              for actor, r, s in zip(self.actors, shards(records, n), shards(seeds, n))])
        return [solution for part in parts for solution in part]

    def timings(self) -> dict[str, float]:
        out, self.pending = self.pending, {}
        return out

    def adapters_updated(self, names: list[str]) -> None:
        """Send the driver's current weights of these adapters to every worker; returns once all have loaded them."""
        states = self.ray.put({name: adapter_state(self.model, name) for name in names})
        self.ray.get([actor.load_adapters.remote(states) for actor in self.actors])

    def close(self) -> None:
        """Stop the workers' engines (vLLM's own processes with them), kill the actors, and stop Ray if the pool
        started it."""
        if self.actors:  # never raises: it runs on the way out of errors too, which it must not hide
            ready, late = self.ray.wait([actor.close.remote() for actor in self.actors], num_returns=len(self.actors),
                                        timeout=CLOSE_SECONDS)
            for ref in ready:
                try:
                    self.ray.get(ref)
                except Exception as err:  # the actor is killed below all the same
                    say(f"a generation worker could not close its engine: {err!r}")
            if late:
                say(f"{len(late)} generation worker(s) did not close their engines within {CLOSE_SECONDS} s: killed")
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()


@contextlib.contextmanager
def generation_pool(recipe: Recipe, engine: Engine) -> Iterator[WorkerPool | None]:
    """A `WorkerPool` when `runtime.generation_workers` > 1 (closed on the way out), else None: generate
    in-process."""
    if recipe.runtime.generation_workers == 1:
        yield None
        return
    import_ray()  # without the extra: the clear error, before anything is stopped
    engine.close_backend()  # the driver only trains: its GPU memory is not held by a generation engine too
    pool = WorkerPool(recipe, engine)
    try:
        yield pool
    finally:
        pool.close()

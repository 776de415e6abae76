"""Generation on Ray actors (`runtime.generation_workers`, harness/stages/workers.py), on the warm tiny model.

Two CPU workers give what one in-process strategy gives: the same online run (progress lines, curves, adapters),
the same base weights on each worker, the same answers (the zero-shot curve's too), and the driver's adapter
weights on every worker after `adapters_updated`.
Without Ray, asking for workers is one clear error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_online import same_tensors, strip_seconds

from harness.data.records import load_source
from harness.errors import RunError
from harness.run.folder import read_jsonl
from harness.stages.workers import check_resources, generation_pool, shards
from harness.strategies.one_pass import zero_shot

REPO = Path(__file__).resolve().parent.parent
# Two groups of four questions, a DPO step on every pair: the second group is generated with updated adapters
# (seed 2 gives steps at questions 0 and 3, in the first group, and 4 and 5).
ARGS = ["model.tiny.warmup_steps=300", "online.questions=8", "data.train.limit=8", "online.question_batch=4",
        "online.checkpoint_every=4", "online.dpo.batch_pairs=1", "online.seed=2"]
SEEDS = [101, 102, 103, 104]

needs_ray = pytest.mark.ray


def ray_or_skip() -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")


def run_online(run_dir: Path, log: Path, *overrides: str) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "online", "tiny", "--run-dir",
                                 str(run_dir), *ARGS, *overrides], cwd=REPO, env=dict(os.environ), stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def key(explored_or_solutions) -> list:
    """What a question got, token ids and pairs included, without timings."""
    if isinstance(explored_or_solutions, list):
        return [(s.answer_ids, s.correct, s.log) for s in explored_or_solutions]
    return [(s.answer_ids, s.correct, s.log, p.tokens, [x.to_dict() for x in p.pairs], p.log)
            for s, p in zip(explored_or_solutions.solutions, explored_or_solutions.plays)]


@needs_ray
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")])])
def test_two_workers_run_the_online_stage_of_one(warm_tiny, tmp_path, device):
    """On CUDA each worker holds a GPU of its own, and the driver trains on the first."""
    ray_or_skip()
    one = run_online(tmp_path / "one", tmp_path / "one.log", f"runtime.device={device}")
    two = run_online(tmp_path / "two", tmp_path / "two.log", f"runtime.device={device}", "runtime.generation_workers=2")
    try:
        for proc, log in ((one, tmp_path / "one.log"), (two, tmp_path / "two.log")):
            proc.wait(timeout=600)
            assert proc.returncode == 0, log.read_text()[-3000:]
    finally:
        for proc in (one, two):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    a, b = tmp_path / "one" / "online", tmp_path / "two" / "online"
    lines = read_jsonl(a / "progress.jsonl")
    assert any(line["updates"] for line in lines[:4]), "no update in the first group: the sync would go untested"
    assert strip_seconds(read_jsonl(b / "progress.jsonl")) == strip_seconds(lines)
    assert strip_seconds(read_jsonl(b / "curves.jsonl")) == strip_seconds(read_jsonl(a / "curves.jsonl"))
    for agent in ("answer", "stop"):
        weights = [load_file(run / "adapters" / agent / "adapter_model.safetensors") for run in (a, b)]
        assert same_tensors(*weights)


@pytest.fixture(scope="module")
def pool_setup(warm_tiny):
    """The tiny recipe's driver engine, its in-process strategy and a two-worker pool beside it."""
    ray_or_skip()
    from harness.config.recipe import load_recipe
    from harness.generation.engine import Engine
    from harness.strategies import build_strategy

    recipe = load_recipe("tiny", [*ARGS, "runtime.generation_workers=2"])
    engine = Engine(recipe)
    records = load_source(recipe.data.train).records[:4]
    with generation_pool(recipe, engine) as pool:
        yield engine, build_strategy(recipe.online.strategy, engine), pool, records
    engine.close()


def worker_weights(pool, index: int) -> dict[str, torch.Tensor]:
    return pool.ray.get(pool.actors[index].__ray_call__.remote(
        lambda worker: {k: v.detach().cpu() for k, v in worker.engine.model.state_dict().items()}))


@needs_ray
def test_workers_build_the_drivers_model_and_answer_as_it(pool_setup):
    engine, strategy, pool, records = pool_setup
    driver = engine.model.state_dict()
    for index in range(2):
        assert same_tensors(worker_weights(pool, index), {k: v.detach().cpu() for k, v in driver.items()})
    assert key(pool.explore(records, SEEDS)) == key(strategy.explore(records, SEEDS))
    assert key(pool.solve(records, SEEDS, trained=False)) == key(strategy.solve(records, SEEDS, trained=False))
    assert key(pool.zero_shot(records, SEEDS)) == key(zero_shot(engine, engine.recipe.strategy, records, SEEDS))
    assert set(pool.timings()) == set(strategy.timings())


@needs_ray
def test_adapters_updated_reaches_every_worker(pool_setup, perturb):
    engine, strategy, pool, records = pool_setup
    before = key(pool.solve(records, SEEDS))
    perturb(engine.model, "answer", seed=5, scale=0.5)
    engine.backend.adapters_updated(["answer"])
    assert key(pool.solve(records, SEEDS)) == before  # not sent yet
    pool.adapters_updated(["answer"])
    changed = key(strategy.solve(records, SEEDS))
    assert changed != before
    assert key(pool.solve(records, SEEDS)) == changed
    driver = {k: v.detach().cpu() for k, v in engine.model.state_dict().items() if ".answer." in k}
    for index in range(2):
        assert same_tensors({k: v for k, v in worker_weights(pool, index).items() if ".answer." in k}, driver)


def test_workers_without_ray_are_a_clear_error(tiny_recipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with generation_pool(tiny_recipe(), None) as pool:
        assert pool is None  # one worker: in-process, Ray never imported
    with pytest.raises(RunError, match=r"runtime.generation_workers > 1 .* pip install 'harness\[ray\]'"):
        with generation_pool(tiny_recipe("runtime.generation_workers=2"), None):
            pass


def test_groups_are_cut_into_contiguous_shards_and_gpus_are_checked():
    assert shards(list(range(5)), 2) == [[0, 1], [2, 3, 4]]
    assert shards([0], 4) == [[0]]  # no worker gets an empty shard
    assert shards([], 2) == []
    check_resources({"num_gpus": 2}, {"GPU": 2, "CPU": 16})
    with pytest.raises(RunError, match="runtime.generation_workers asks Ray for 2 GPUs .* has 1"):
        check_resources({"num_gpus": 2}, {"GPU": 1})
    with pytest.raises(RunError, match="asks Ray for 3 CPUs .* has 2"):
        check_resources({"num_cpus": 3}, {"CPU": 2})

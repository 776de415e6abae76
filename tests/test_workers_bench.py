"""`harness bench flow --workers`: the online loop's generation on 1 and 2 Ray workers does the same work."""

from __future__ import annotations

import pytest

from harness.config.recipe import load_recipe
from harness.data.records import load_source
from harness.tools.bench import bench_workers


@pytest.mark.ray
def test_bench_workers_generate_the_same_tokens_on_one_and_two_workers(warm_tiny):
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    from harness.generation.engine import Engine

    recipe = load_recipe("tiny", ["model.tiny.warmup_steps=300", "online.question_batch=4"])
    engine = Engine(recipe)
    records = load_source(recipe.data.train).records[:4]
    try:
        one, two = (bench_workers(recipe, engine, records, count) for count in (1, 2))
    finally:
        engine.close()
    assert (one["workers"], two["workers"]) == (1, 2)
    assert one["tokens"] == two["tokens"] > 0

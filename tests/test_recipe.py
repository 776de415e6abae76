"""Recipes: every file in recipes/ loads; bad recipes fail naming the field and the file; overrides; hash."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.config.recipe import RECIPES_DIR, list_recipes, load_recipe
from harness.errors import RecipeError

REQUIRED = {"llama3-8b", "phi3-medium", "tiny", "smollm2-135m"}


def test_every_recipe_file_loads():
    files = sorted(RECIPES_DIR.glob("*.yaml"))
    assert {f.stem for f in files} >= REQUIRED
    for path in files:
        recipe = load_recipe(str(path))
        assert recipe.name == path.stem
        assert len(recipe.hash()) == 16


def test_paper_recipes_match_tables_2_and_3():
    for name in ("llama3-8b", "phi3-medium"):
        r = load_recipe(name)
        dpo = r.online.dpo
        assert (dpo.lr, dpo.batch_pairs, dpo.beta, dpo.grad_clip) == (5e-6, 32, 1.0, 1.0)
        assert r.online.dpo.optimizer == "adam"
        for lora in (r.adapters["answer"], r.adapters["stop"]):
            assert (lora.r, lora.alpha, lora.dropout, lora.targets) == (8, 8, 0.05, "all-linear")
        assert (r.strategy.max_chunks, r.strategy.chunk_size) == (6, 160)
        sft = r.compile.sft
        assert (sft.lr, sft.batch_size * sft.grad_accum, sft.grad_accum, sft.grad_clip, sft.warmup_ratio,
                sft.epochs) == (2e-4, 16, 2, 1.0, 0.1, 3)
        assert (sft.lora.r, sft.lora.alpha, sft.lora.dropout, sft.lora.targets) == (16, 16, 0.05, "all-linear")
        assert r.data.train.format == "metamath" and "MetaMathQA" in r.data.train.source
        assert {t.name for t in r.eval.tasks} == {"gsm8k", "math"}
        assert r.paper is not None and r.paper.paper == "flow-dpo"
        for key in ("online.dpo.lr", "online.dpo.batch_pairs", "online.strategy.chunk_size", "compile.sft.lr",
                    "online.strategy.temperature"):
            assert key in r.sources, f"{name}: {key} has no source"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def tiny_text() -> str:
    return (RECIPES_DIR / "tiny.yaml").read_text()


def test_unknown_key_names_field_and_file(tmp_path):
    path = write(tmp_path, "tiny", tiny_text().replace("    beta: 1.0", "    beta: 1.0\n    betta: 2.0"))
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    assert "online.dpo.betta" in str(err.value) and "unknown key" in str(err.value)
    assert str(path) in str(err.value)


def test_wrong_type_names_field_and_file(tmp_path):
    path = write(tmp_path, "tiny", tiny_text().replace("  chunk_size: 12", "  chunk_size: twelve"))
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    assert "online.strategy.chunk_size" in str(err.value) and str(path) in str(err.value)


def test_source_must_name_a_field(tmp_path):
    path = write(tmp_path, "tiny", tiny_text().replace("  online.dpo.lr:", "  online.learning_rate:"))
    with pytest.raises(RecipeError, match="online.learning_rate"):
        load_recipe(str(path))


def test_overrides_and_hash():
    base = load_recipe("tiny")
    changed = load_recipe("tiny", ["online.dpo.lr=0.5", "online.strategy.max_chunks=2"])
    assert changed.online.dpo.lr == 0.5 and changed.strategy.max_chunks == 2
    assert changed.hash() != base.hash()
    assert load_recipe("tiny").hash() == base.hash()
    with pytest.raises(RecipeError, match="online.strategy.max_chunks"):
        load_recipe("tiny", ["online.strategy.max_chunks=zero"])
    with pytest.raises(RecipeError, match="key.sub=value"):
        load_recipe("tiny", ["online.strategy.max_chunks"])


def test_unknown_recipe_lists_known():
    with pytest.raises(RecipeError, match="tiny"):
        load_recipe("no-such-recipe")
    assert REQUIRED <= set(list_recipes())


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_validate_and_list(tmp_path):
    ok = cli("validate")
    assert ok.returncode == 0, ok.stderr
    assert all(name in ok.stdout for name in REQUIRED)
    listed = cli("list")
    assert all(name in listed.stdout for name in REQUIRED)
    bad = write(tmp_path, "tiny", tiny_text().replace("  beta: 1.0", "  beta: [1]"))
    res = cli("validate", str(bad))
    assert res.returncode != 0
    assert "online.dpo.beta" in res.stderr and str(bad) in res.stderr


def test_cli_show_prints_resolved_recipe():
    res = cli("show", "tiny", "online.questions=3")
    assert res.returncode == 0
    assert "questions: 3" in res.stdout and "hash" in res.stdout


def test_runtime_is_outside_the_hash_and_a_run_resumes_after_changing_it(tmp_path):
    import json

    from harness.errors import RunError
    from harness.run.folder import RunDir

    recipe = load_recipe("tiny")
    tuned = load_recipe("tiny", ["runtime.hf.max_batch=8", "runtime.dpo_micro_batch_tokens=512"])
    assert recipe.hash() == tuned.hash()
    assert load_recipe("tiny", ["online.dpo.lr=0.5"]).hash() != recipe.hash()

    RunDir(tmp_path).prepare(recipe)  # the object (and its lock) is gone at once, as a crashed process's would be
    RunDir(tmp_path).prepare(tuned)  # the run goes on with a smaller memory setting
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["runtime"]["hf"]["max_batch"] == 64  # what the run started with
    [change] = prov["runtime_changes"]
    assert change["fields"] == ["dpo_micro_batch_tokens", "hf.max_batch"]
    assert change["runtime"]["hf"]["max_batch"] == 8
    assert "max_batch: 8" in (tmp_path / "recipe.yaml").read_text()  # the recipe now in force
    with pytest.raises(RunError, match="fields that differ: online.dpo.lr"):
        RunDir(tmp_path).prepare(load_recipe("tiny", ["online.dpo.lr=0.5"]))


def test_paper_recipes_follow_the_paper_where_it_is_explicit():
    for name in ("llama3-8b", "phi3-medium"):
        r = load_recipe(name)
        assert r.online.dpo.update == "per_question" and r.online.question_batch == 1  # "updating in real-time"
        assert r.data.compile.limit == 1500  # §3.3: a subset of 1,500 MetaMath prompts
        assert "candidate solution is correct" in r.strategy.stop_prompt.system + r.strategy.stop_prompt.user
        assert r.strategy.answer_prompt.system.startswith("You are a helpful math assistant")
        assert r.eval.max_gen_toks >= r.strategy.chunk_size * r.strategy.max_chunks
        assert {t.name: t.metric for t in r.eval.tasks} == {"gsm8k": "exact_match,flexible-extract",
                                                            "math": "math_verify,none"}
        assert r.compile.temperature == r.baseline.temperature  # self and Flow traces sampled alike
        for key in ("online.dpo.update", "data.compile", "online.strategy.stop_prompt",
                    "runtime.vllm.gpu_memory_utilization",
                    "eval.max_gen_toks"):
            assert key in r.sources, f"{name}: {key} has no source"


def test_metadata_commands_do_not_import_torch():
    """`list`, `show` and `validate` answer at once: torch, transformers and peft take seconds to import."""
    code = ("import sys\nfrom harness.cli import main\n"
            "for argv in (['list'], ['show', 'llama3-8b'], ['validate'], ['show', 'phi3-medium', '--rehearse']):\n"
            "    assert main(argv) == 0\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'lm_eval') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_other_ranks_of_a_distributed_launch_wait_for_rank_0s_run_folder(tmp_path, monkeypatch):
    import functools
    import threading

    from harness.run import folder as rundir
    from harness.run.distributed import wait_for
    from harness.run.folder import RunDir

    recipe = load_recipe("tiny")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(rundir, "wait_for", functools.partial(wait_for, poll_s=0.01))
    writer = threading.Timer(0.2, lambda: (tmp_path / "recipe.yaml").write_text(recipe.to_yaml()))
    writer.start()
    RunDir(tmp_path).prepare(recipe)  # returns once rank 0 has written the recipe; writes and locks nothing
    writer.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_every_strategy_name_has_a_folder_with_its_class():
    from importlib import import_module

    from harness.config.strategies import TAGS

    assert TAGS == {"flow_dpo", "mcts_dpo", "step_controlled", "naive_dpo"}
    for name in TAGS:
        cls = import_module(f"harness.strategies.{name}.strategy").STRATEGY
        assert all(callable(getattr(cls, method, None)) for method in ("solve", "play", "timings")), name


@pytest.mark.parametrize("override", ["online.questions=true", "online.questions=yes", "online.dpo.lr=true",
                                      "online.strategy.chunk_size=no"])
def test_a_boolean_is_not_a_number(override):
    key = override.split("=")[0].rsplit(".", 1)[1]
    with pytest.raises(RecipeError, match=f"{key}: (True|False) is a boolean, not a number"):
        load_recipe("tiny", [override])
    assert load_recipe("tiny", ["model.chat_template=true"]).model.chat_template is True  # a boolean field takes one

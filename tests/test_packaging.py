"""Installable anywhere: the wheel carries the recipes and paper files, and an installed wheel runs from any folder.

harness is imported inside the tests, not at the top: `tox -e install` runs the slow test without it installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Top-level data folder -> where pyproject.toml puts it inside the package.
DATA = {"recipes": "harness/recipes", "results/papers": "harness/papers_data"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
SMALL = ["online.questions=8", "data.train.limit=8", "data.compile.limit=8", "eval.tasks.0.limit=8"]


def data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure the assertion shows the end of its output."""
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """sdist, then the wheel from it (as tox and pip build), from a clean copy of the sources: an in-tree build would
    race other test runs and ship files since deleted that linger in build/lib."""
    src = tmp_path_factory.mktemp("src")
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy2(REPO / name, src / name)
    for name in ["harness", *DATA]:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: setuptools is already here, and a test must not need the network.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], timeout=300)
    (found,) = out.glob("*.whl")
    return found


def test_wheel_carries_every_recipe_and_paper_file(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for top, packaged in DATA.items():
            expected = {f"{packaged}/{p.name}": p.read_bytes() for p in data_files(REPO / top)}
            assert expected, top
            assert {n for n in names if n.startswith(packaged + "/")} == set(expected), top
            for name, data in expected.items():
                assert zf.read(name) == data, name


def test_wheel_carries_every_module_and_data_file(wheel):
    """pyproject.toml lists the packages by hand: a new subpackage or data file it misses fails here."""
    names = set(zipfile.ZipFile(wheel).namelist())
    local = {str(p.relative_to(REPO)) for p in (REPO / "harness").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}
    assert local - names == set()


def test_unpacked_wheel_reads_its_packaged_copies(wheel, tmp_path):
    """An installed wheel (here: unpacked on PYTHONPATH, ahead of the editable install) reads harness/recipes/ and
    harness/papers_data/, whatever the current folder."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("from harness.config.recipe import RECIPES_DIR, list_recipes; "
            "from harness.reporting.papers import PAPERS_DIR, list_papers;"
            "print(RECIPES_DIR); print(PAPERS_DIR); print(','.join(list_recipes())); print(','.join(list_papers()))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = run([sys.executable, "-c", code], cwd=elsewhere, env=env, timeout=120).stdout.splitlines()
    assert out[:2] == [str(site / "harness" / "recipes"), str(site / "harness" / "papers_data")]
    assert out[2].split(",") == sorted(p.stem for p in data_files(REPO / "recipes"))
    assert out[3].split(",") == [p.stem for p in data_files(REPO / "results" / "papers")]
    listing = run([sys.executable, "-m", "harness.cli", "list"], cwd=elsewhere, env=env, timeout=120).stdout
    assert all(p.stem in listing for p in data_files(REPO / "recipes"))


def test_checkout_reads_top_level_recipes_and_papers():
    """In a checkout the top-level files are the ones used, so an edit to recipes/ shows at once."""
    import harness
    from harness.config.recipe import RECIPES_DIR, recipe_path
    from harness.reporting.papers import PAPERS_DIR

    if Path(harness.__file__).resolve().parent != REPO / "harness":
        pytest.skip("harness is installed from a wheel here, not imported from this checkout")
    assert RECIPES_DIR == REPO / "recipes"
    assert PAPERS_DIR == REPO / "results" / "papers"
    assert recipe_path("tiny") == REPO / "recipes" / "tiny.yaml"


def test_run_dir_defaults_to_cwd(tmp_path, monkeypatch):
    from harness.config.recipe import load_recipe
    from harness.run.folder import RunDir

    monkeypatch.chdir(tmp_path)
    path = RunDir.default_path(load_recipe("tiny"), "rehearsal")
    assert path.parent == tmp_path.resolve() / "results" / "runs"
    assert path.name.startswith("tiny-rehearsal-")


@pytest.mark.slow
def test_installed_wheel_lists_and_reproduces(wheel, tmp_path):
    """A fresh venv with only the wheel (and its dependencies) installed: `harness list` and `harness reproduce tiny`
    from a folder that is not the checkout."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=300)
    run([venv / "bin" / "pip", "install", "-q", "-c", REPO / "constraints-cpu.txt", wheel], timeout=1800)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, **OFFLINE, "HARNESS_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")}
    env.pop("PYTHONPATH", None)
    harness = venv / "bin" / "harness"
    listing = run([harness, "list"], cwd=elsewhere, env=env, timeout=300).stdout
    assert all(p.stem in listing for p in data_files(REPO / "recipes")), listing
    shown = run([harness, "show", "tiny"], cwd=elsewhere, env=env, timeout=300).stdout
    assert str(venv) in shown.splitlines()[0], shown.splitlines()[0]
    run([harness, "reproduce", "tiny", "--run-dir", "run", *SMALL], cwd=elsewhere, env=env, timeout=1800)
    assert (elsewhere / "run" / "report" / "report.md").is_file()
    assert (elsewhere / "run" / "provenance.json").is_file()

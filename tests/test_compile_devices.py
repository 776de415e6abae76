"""The compile stage's SFTs at once, one child process per device (`runtime.sft_devices`): the same models as one
after another, resumable, and placed where asked."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import on_cuda
from safetensors.torch import load_file

from harness.config.recipe import load_recipe
from harness.errors import RecipeError, RunError
from harness.generation.lazy import LazyEngine
from harness.modeling.families import family_tokenizer
from harness.modeling.models import chat_example
from harness.run.folder import RunDir, write_jsonl
from harness.stages import compile as compile_stage
from harness.stages.compile import child_devices, run_compile, visible_gpus

REPO = Path(__file__).resolve().parent.parent

SOURCES = ["flow", "self", "ground_truth"]
# No warm-up (a random tiny model trains as well as a warm one here) and no trace collection: the SFT sets are
# written into the run folder beforehand, as a run that was stopped after collecting them leaves it.
TINY = ["model.tiny.warmup_steps=0"]


def write_sets(run: Path) -> None:
    """Three small, different SFT sets (6 examples each: 2 epochs of one step) in `run`'s compile folder."""
    tok = family_tokenizer("chatml")
    for k, source in enumerate(SOURCES):
        lines = []
        for i in range(6):
            prompt, completion = chat_example(tok, f"What is {i} + {k}?", f"{i} + {k} = {i + k}. The answer: {i + k}")
            lines.append({"id": f"q{i}", "prompt_ids": prompt, "completion_ids": completion})
        write_jsonl(run / "compile" / f"sft_{source}.jsonl", lines)


def compile_run(run: Path, *overrides: str) -> dict:
    recipe = load_recipe("tiny", [*TINY, *overrides])
    return run_compile(recipe, RunDir(run), LazyEngine(recipe))


def sft_done(run: Path, source: str) -> dict:
    return json.loads((run / "compile" / f"sft-{source}" / "done.json").read_text())


def adapter(run: Path, source: str) -> dict[str, torch.Tensor]:
    return load_file(run / "compile" / f"sft-{source}" / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Path:
    """The SFTs one after another in this process (the default on a machine without two GPUs)."""
    run = tmp_path_factory.mktemp("sequential") / "run"
    write_sets(run)
    compile_run(run)
    return run


@pytest.fixture
def one_thread_per_child(monkeypatch):
    """Each of two CPU children gets os.cpu_count() // 2 threads: pretend 2 cores so that each runs on one thread, as
    this process does (conftest), and the same kernels give float-identical models on any machine."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)


def assert_same_sft(run: Path, reference: Path, source: str) -> None:
    got, want = sft_done(run, source), sft_done(reference, source)
    assert (got["examples"], got["steps"], got["train_loss"]) == (want["examples"], want["steps"], want["train_loss"])
    assert [e.get("loss") for e in got["log"]] == [e.get("loss") for e in want["log"]]
    weights, reference_weights = adapter(run, source), adapter(reference, source)
    assert weights.keys() == reference_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, reference_weights[name]), (source, name)


def test_sfts_on_two_cpu_processes_equal_those_one_after_another(sequential, tmp_path, one_thread_per_child,
                                                                 monkeypatch):
    run = tmp_path / "run"
    write_sets(run)
    # spawned children import their own `sft`: this process training any set would fail the run
    monkeypatch.setattr(compile_stage, "sft", lambda *args: pytest.fail("an SFT trained in the parent process"))
    summary = compile_run(run, "runtime.sft_devices=[cpu, cpu]")  # three SFTs on two devices: one waits
    for source in SOURCES:
        assert_same_sft(run, sequential, source)
        assert summary["sft"][source]["steps"] == 2


@on_cuda
def test_sfts_train_in_a_child_process_on_the_gpu(sequential, tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_sets(run)
    monkeypatch.setattr(compile_stage, "sft", lambda *args: pytest.fail("an SFT trained in the parent process"))
    summary = compile_run(run, "runtime.sft_devices=[cuda:0]")
    for source in SOURCES:
        assert summary["sft"][source]["steps"] == 2 and math.isfinite(summary["sft"][source]["train_loss"])
        # the sequential CPU run's model, up to the GPU's float rounding
        want = adapter(sequential, source)
        for name, tensor in adapter(run, source).items():
            torch.testing.assert_close(tensor, want[name], rtol=1e-3, atol=1e-5)


def test_a_resumed_run_trains_only_the_missing_sfts(sequential, tmp_path, one_thread_per_child):
    run = tmp_path / "run"
    shutil.copytree(sequential, run)
    for path in ["compile/done.json", "compile/sft-self", "compile/sft-ground_truth"]:
        target = run / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    kept = run / "compile" / "sft-flow"
    before = {path: path.stat().st_mtime_ns for path in kept.rglob("*")}
    summary = compile_run(run, "runtime.sft_devices=[cpu, cpu]")
    assert {path: path.stat().st_mtime_ns for path in kept.rglob("*")} == before  # flow was not trained again
    assert summary["sft"]["flow"] == sft_done(sequential, "flow")
    for source in ["self", "ground_truth"]:
        assert_same_sft(run, sequential, source)


def test_an_sft_that_fails_in_its_process_is_named_and_the_others_are_kept(tmp_path):
    run = tmp_path / "run"
    write_sets(run)
    broken = run / "compile" / "sft_self.jsonl"
    write_jsonl(broken, [{"id": "q0", "prompt_ids": [10**6], "completion_ids": [10**6]}])  # beyond the vocabulary
    with pytest.raises(RunError, match=r"SFT self failed in a child process \(self: IndexError"):
        compile_run(run, "runtime.sft_devices=[cpu, cpu]", "compile.sources=[self, ground_truth]")
    assert sft_done(run, "ground_truth")["steps"] == 2  # done.json written: a rerun trains only `self`
    assert not (run / "compile" / "sft-self" / "done.json").exists()


def test_sft_devices_must_be_devices_and_stay_out_of_the_recipe_hash():
    with pytest.raises(RecipeError, match=r"runtime\.sft_devices: .*'gpu0'.* each entry is `cpu` or `cuda:N`"):
        load_recipe("tiny", ["runtime.sft_devices=[cpu, gpu0]"])
    placed = load_recipe("tiny", ["runtime.sft_devices=[cuda:0, cuda:1]"])
    assert placed.runtime.sft_devices == ["cuda:0", "cuda:1"]
    assert placed.hash() == load_recipe("tiny").hash()  # placement changes no result


def test_every_visible_gpu_trains_an_sft_unless_the_recipe_says_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    on_gpus = load_recipe("tiny", ["runtime.device=auto"])
    assert child_devices(on_gpus) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert child_devices(load_recipe("tiny")) == []  # runtime.device: cpu keeps the SFTs in this process
    assert child_devices(load_recipe("tiny", ["runtime.sft_devices=[cuda:3, cpu]"])) == ["cuda:3", "cpu"]
    with pytest.raises(RunError, match=r"runtime.sft_devices: \['cuda:4'\] are not among the 4 GPUs"):
        child_devices(load_recipe("tiny", ["runtime.sft_devices=[cuda:4]"]))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert child_devices(on_gpus) == []  # one GPU: one SFT after another, as before
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert child_devices(on_gpus) == []  # a distributed launch trains each SFT on all its ranks
    with pytest.raises(RunError, match="leave it unset under a distributed launch"):
        child_devices(load_recipe("tiny", ["runtime.sft_devices=[cpu, cpu]"]))


def test_a_child_sees_the_gpu_its_parent_calls_cuda_n(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [visible_gpus(d) for d in ("cuda:0", "cuda:2", "cpu")] == ["0", "2", ""]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # the parent's cuda:1 is the machine's GPU 6
    assert [visible_gpus(d) for d in ("cuda:0", "cuda:1", "cpu")] == ["4", "6", ""]


# A parent that trains on one child (pin_device as the compile stage's pool has it) and prints the child's pid.
PARENT = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from harness.run.distributed import pin_device
context = multiprocessing.get_context("spawn")
free = context.Queue()
free.put("")
with ProcessPoolExecutor(1, mp_context=context, initializer=pin_device, initargs=(free, 1, os.getpid())) as pool:
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120).result()
"""


def running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie nobody reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_an_sft_child_ends_when_its_parent_is_killed():
    """A run killed during the SFTs leaves no child training on: it would hold its GPU, and write its adapter into
    the folder that the resumed run trains the same SFT in."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert running(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while running(child):
        assert time.monotonic() < deadline, "the SFT child outlived its killed parent"
        time.sleep(0.05)


def test_a_child_that_cannot_ask_to_end_with_its_parent_says_so(monkeypatch, capsys):
    import ctypes

    from harness.run.distributed import die_with_parent

    class NoPrctl:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def prctl(self, *args) -> int:
            ctypes.set_errno(1)
            return -1

    monkeypatch.setattr(ctypes, "CDLL", NoPrctl)
    monkeypatch.setattr(sys, "platform", "linux")
    die_with_parent(os.getppid())  # this process's parent is alive: it goes on
    assert "will not end with its parent (prctl: Operation not permitted)" in capsys.readouterr().err

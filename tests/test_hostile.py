"""What a clumsy or hostile user meets at the command line: one sentence naming the file, field or row (exit code
2, no traceback), and nothing of theirs lost. The run-folder cases with a model are in test_online.py (edited data,
an escaping latest.json, a missing learners.pt, an oversized question), test_evaluate.py (planted task files),
test_reproduce.py (a moved run folder) and test_report.py (a report where there is no run folder)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main as cli_main
from harness.config.recipe import RECIPES_DIR

REPO = Path(__file__).resolve().parent.parent


def error_line(capsys) -> str:
    """What the CLI said: one error, from `harness: error: ` to its end (a validation error lists its fields)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("harness: error: ") == 1, err
    return err[err.index("harness: error: "):]


def test_an_override_that_is_not_yaml_is_blamed_on_the_override(capsys):
    assert cli_main(["show", "tiny", "online.questions=[1"]) == 2
    assert "override 'online.questions=[1': the value is not valid YAML" in error_line(capsys)


def test_a_boolean_count_is_refused(capsys):
    assert cli_main(["show", "tiny", "online.questions=yes"]) == 2
    assert "questions: True is a boolean, not a number" in error_line(capsys)


def test_a_garbage_recipe_yaml_in_a_run_folder_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_bytes(b"name: [unclosed\n\x00\x01")
    assert cli_main(["run", "online", "tiny", "--run-dir", str(run)]) == 2
    assert f"{run / 'recipe.yaml'}: " in error_line(capsys)
    (run / "recipe.yaml").write_text("name: tiny\nonline: 3\n")
    assert cli_main(["run", "online", "tiny", "--run-dir", str(run)]) == 2
    line = error_line(capsys)
    assert f"{run / 'recipe.yaml'}: not a recipe this harness can read" in line
    assert (run / "recipe.yaml").read_text() == "name: tiny\nonline: 3\n"  # left as it was


def test_a_recipe_that_is_not_utf8_names_the_file(tmp_path, capsys):
    bad = tmp_path / "latin.yaml"
    bad.write_bytes((RECIPES_DIR / "tiny.yaml").read_text().replace("tiny", "latin", 1).encode() + b"# caf\xe9\n")
    assert cli_main(["show", str(bad)]) == 2
    assert f"{bad}: not UTF-8 text" in error_line(capsys)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb.write_text("\n".join(levels) + "\nname: bomb\n")
    assert cli_main(["show", str(bomb)]) == 2  # 9**9 values once expanded; refused in milliseconds
    assert f"{bomb}: its aliases expand to more than 100000 values" in error_line(capsys)
    selfish = tmp_path / "selfish.yaml"
    selfish.write_text("a: &a [1, *a]\nname: selfish\n")
    assert cli_main(["show", str(selfish)]) == 2
    assert f"{selfish}: its aliases expand to more than 100000 values" in error_line(capsys)


def test_grading_a_directory_is_a_sentence(tmp_path, capsys):
    assert cli_main(["grade", str(tmp_path), "--task", "gsm8k"]) == 2
    assert f"{tmp_path}: Is a directory" in error_line(capsys)


def test_a_closed_pipe_ends_the_command_quietly():
    shown = subprocess.run(f"{sys.executable} -m harness.cli show tiny | head -1", shell=True, cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert shown.stdout.startswith("# ") and shown.stdout.count("\n") == 1
    assert "Traceback" not in shown.stderr and "BrokenPipe" not in shown.stderr, shown.stderr


def test_an_internal_bug_keeps_its_traceback(monkeypatch):
    import harness.cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(harness.cli, "cmd_show", broken)
    with pytest.raises(KeyError):
        cli_main(["show", "tiny"])


def test_a_recipe_copied_outside_the_recipes_folder_still_loads(tmp_path, capsys):
    copy = shutil.copy(RECIPES_DIR / "tiny.yaml", tmp_path / "tiny.yaml")
    assert cli_main(["show", str(copy)]) == 0
    assert capsys.readouterr().out.startswith(f"# {copy}")


def test_a_read_only_run_folder_is_a_sentence(tmp_path, capsys, monkeypatch):
    """As root (CI) a chmod cannot make a folder read-only, so the lock's open fails the way it would for a user."""
    import errno

    from harness.run.folder import RunDir

    def refused(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self.path / ".lock"))

    monkeypatch.setattr(RunDir, "lock", refused)
    assert cli_main(["run", "online", "tiny", "--run-dir", str(tmp_path / "run")]) == 2
    assert f"{tmp_path / 'run' / '.lock'}: Permission denied (errno EACCES)" in error_line(capsys)


def test_a_full_disk_at_a_checkpoint_says_so_and_keeps_the_last_one(tmp_path, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    import torch

    from harness.errors import RunError
    from harness.training import checkpoints

    def full(obj, path):
        raise RuntimeError("basic_ios::clear: iostream error")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))
    (tmp_path / "checkpoint" / "ckpt-000002").mkdir(parents=True)
    (tmp_path / "checkpoint" / "latest.json").write_text('{"checkpoint": "ckpt-000002", "position": 2}')
    with pytest.raises(RunError, match=r"adapters.pt: no space left on the device \(1 MiB free\)"):
        checkpoints.save_checkpoint(tmp_path, None, {}, [], 4)
    assert (tmp_path / "checkpoint" / "ckpt-000002").is_dir()
    assert (tmp_path / "checkpoint" / "latest.json").read_text() == '{"checkpoint": "ckpt-000002", "position": 2}'


def test_an_override_that_fails_validation_is_blamed_on_the_override(capsys):
    assert cli_main(["show", "tiny", "online.strategy.sample=8"]) == 2
    said = error_line(capsys)
    assert "tiny.yaml is valid, but not with the overrides online.strategy.sample=8" in said
    assert "online.strategy.sample: unknown key" in said

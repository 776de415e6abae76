"""The console: libraries' output goes to the stage log (every writer, down to file descriptors and child
processes); the harness's own lines and progress go to the console; plain heartbeat lines off a terminal."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from harness.run import console


@pytest.fixture
def fresh_settings():
    saved = (console.settings.quiet, console.settings.verbose)
    yield console.settings
    console.configure(*saved)


def test_captured_sends_every_writer_to_the_log_and_the_harness_to_the_console(tmp_path, capfd, fresh_settings):
    console.configure(quiet=False, verbose=False)
    log = tmp_path / "logs" / "stage.log"
    with console.captured(log):
        print("from python's stdout")
        print("from python's stderr", file=sys.stderr)
        library_log = logging.getLogger("some.library")
        library_log.addHandler(logging.StreamHandler())  # as a library sets its logging up when imported
        library_log.warning("a library warning")
        subprocess.run([sys.executable, "-c", "import os; os.write(1, b'from a child process\\n')"], check=True)
        console.say("the harness speaks")
    out, err = capfd.readouterr()
    text = log.read_text()
    for line in ("from python's stdout", "from python's stderr", "a library warning", "from a child process"):
        assert line in text and line not in out + err
    assert "the harness speaks" in err and "the harness speaks" not in text
    with console.captured(log):  # a resumed stage appends to its log
        print("second attempt")
    assert log.read_text().startswith(text) and "second attempt" in log.read_text()


def test_verbose_echoes_library_output_to_the_console_too(tmp_path, capfd, fresh_settings):
    console.configure(verbose=True)
    with console.captured(tmp_path / "x.log"):
        print("library line")
    out, err = capfd.readouterr()
    assert "library line" in out + err and "library line" in (tmp_path / "x.log").read_text()


def test_off_a_terminal_progress_prints_heartbeat_lines_and_a_last_one(capsys, monkeypatch, fresh_settings):
    console.configure()
    clock = iter(range(0, 10_000, 25))  # 25 s a call: a heartbeat every third update or so
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    bar = console.ProgressBar("online", 10, "question")
    for i in range(10):
        bar.update(1, trained=f"{i}0.0%")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 6  # not one per question
    assert lines[-1].startswith("online    10/10 questions  trained 90.0%")
    assert "ETA" in lines[0]


def test_quiet_prints_no_progress(capsys, fresh_settings):
    console.configure(quiet=True)
    bar = console.ProgressBar("online", 2, "question")
    bar.update(2)
    bar.close()
    console.say("hidden")
    assert capsys.readouterr().err == ""


def test_errors_are_one_line_unless_debug(capsys):
    from harness.cli import main

    assert main(["show", "no-such-recipe"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'no-such-recipe'" in err and "--debug" in err
    with pytest.raises(ValueError, match="unknown recipe"):
        main(["show", "no-such-recipe", "--debug"])

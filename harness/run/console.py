"""What a user sees: the harness's own lines and one live progress display per stage; libraries go to the log.

While a stage runs, file descriptors 1 and 2 point into a pipe whose reader thread writes everything to
RUN/logs/<stage>.log (and, with `-v`, to the console too). Redirecting the descriptors rather than `sys.stdout`
catches every writer: Python's warnings and logging, tqdm bars of lm-eval and datasets, C extensions and child
processes (vLLM's engine core). The harness writes to a duplicate of the console's descriptor taken before the
redirect. On a terminal the progress display is a live bar with the stage's numbers; elsewhere (`nohup`, a batch
scheduler) it is a plain heartbeat line every `HEARTBEAT_S` seconds and one at the end.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HEARTBEAT_S = 60.0
"""Seconds between progress lines when the console is not a terminal."""


@dataclass
class Settings:
    quiet: bool = False
    """Only errors and the final summary."""
    verbose: bool = False
    """Library output on the console too (it always goes to the stage's log)."""


settings = Settings()
_stream: IO[str] | None = None
"""The console while a stage's output is captured (a duplicate of its descriptor); None: sys.stderr."""


def configure(quiet: bool = False, verbose: bool = False) -> None:
    settings.quiet, settings.verbose = quiet, verbose


def stream() -> IO[str]:
    return _stream or sys.stderr


def say(text: str) -> None:
    """A line of the harness's own, unless quiet."""
    if not settings.quiet:
        print(text, file=stream(), flush=True)


@contextlib.contextmanager
def captured(log: Path) -> Iterator[None]:
    """Send descriptors 1 and 2 (everything libraries print) to `log`, and to the console with `-v`."""
    global _stream
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console = os.fdopen(os.dup(2), "w", buffering=1)
    echo = os.dup(2) if settings.verbose else None  # the pump's own: it may outlive this block (child processes)
    read_end, write_end = os.pipe()
    pump = threading.Thread(target=_pump, args=(read_end, log, echo), daemon=True)
    pump.start()
    for fd in (1, 2):
        os.dup2(write_end, fd)
    os.close(write_end)
    previous, _stream = _stream, console
    # Python's own streams may not write to the descriptors (pytest, notebooks): point them there too.
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (open(fd, "w", buffering=1, closefd=False) for fd in (1, 2))  # noqa: SIM115
    try:
        yield
    finally:
        sys.stdout.close()
        sys.stderr.close()
        sys.stdout, sys.stderr = streams
        for fd, copy in saved.items():
            os.dup2(copy, fd)  # the pipe loses its last writer in this process: the pump reads to its end
            os.close(copy)
        pump.join(timeout=10)
        _stream = previous
        console.close()


def _pump(read_end: int, log: Path, echo: int | None) -> None:
    """Copy the pipe into the log (appending: a resumed stage keeps what it logged before), and echo it."""
    with open(log, "ab") as out, os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            out.write(chunk)
            out.flush()
            if echo is not None:
                os.write(echo, chunk)
    if echo is not None:
        os.close(echo)


class ProgressBar:
    """A stage's progress: done / total, the numbers that matter, and an ETA."""

    def __init__(self, desc: str, total: int, unit: str, initial: int = 0) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.done = self.start_done = initial
        self.numbers: dict[str, Any] = {}
        self.started = self.last_line = time.monotonic()
        self.tty = not settings.quiet and stream().isatty()
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream(), leave=True,
                            dynamic_ncols=True)

    def update(self, n: int = 1, **numbers: Any) -> None:
        self.done += n
        self.numbers.update(numbers)
        if self.bar is not None:
            self.bar.set_postfix_str(self._numbers(), refresh=False)
            self.bar.update(n)
        elif not settings.quiet and time.monotonic() - self.last_line >= HEARTBEAT_S:
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not settings.quiet:
            self._line()

    def _numbers(self) -> str:
        return "  ".join(f"{k} {v}" for k, v in self.numbers.items())

    def _line(self) -> None:
        self.last_line = time.monotonic()
        plural = f"{self.unit}es" if self.unit.endswith("ch") else f"{self.unit}s"
        print(f"{self.desc:<9} {self.done}/{self.total} {plural}  {self._numbers()}  {self._eta()}".rstrip(),
              file=stream(), flush=True)

    def _eta(self) -> str:
        made = self.done - self.start_done
        if not made or self.done >= self.total:
            return f"{time.monotonic() - self.started:.0f} s"
        left = (time.monotonic() - self.started) / made * (self.total - self.done)
        return f"ETA {left / 60:.0f} min" if left >= 120 else f"ETA {left:.0f} s"


def percent(hits: int, n: int) -> str:
    return f"{100 * hits / n:.1f}%" if n else "–"

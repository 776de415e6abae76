"""Where this process stands in a distributed launch (`accelerate launch`, torchrun): only SFT runs on many.

Rank 0 does everything that writes the run folder (lock, provenance, SFT sets, markers); the other ranks wait for
what they read from it and join the SFT trainers, which synchronise among themselves.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from multiprocessing.queues import Queue
from pathlib import Path


def world_size() -> int:
    """Processes of the launch, 1 when not launched by a distributed launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank, 0 when not launched by a distributed launcher."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its node (its GPU), 0 when not launched by a distributed launcher."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def wait_for(path: Path, what: str, timeout_s: float = 7 * 24 * 3600, poll_s: float = 5.0) -> None:
    """Block a non-main rank until rank 0 has written `path` (SFT sets can take hours to collect at 8B)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank()}: gave up waiting for {what} ({path})")
        time.sleep(poll_s)


def pin_device(free: Queue, threads: int, parent: int) -> None:
    """The first call in a child process that trains on one device: end with the `parent` process, then take a
    device (a CUDA_VISIBLE_DEVICES value) before torch starts CUDA, which reads it only then, and a share of the CPU
    cores. It lives in this module, which imports nothing heavy, so that a spawned child runs it before importing
    the libraries."""
    die_with_parent(parent)
    import torch

    os.environ["CUDA_VISIBLE_DEVICES"] = free.get()
    torch.set_num_threads(threads)


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends a process when the thread that started it ends."""


def die_with_parent(parent: int) -> None:
    """On Linux, have the kernel SIGKILL this process when `parent` (the process that started it) ends. A run killed
    during its SFTs cannot tell its children (multiprocessing ends them only on a clean exit): they would train on,
    holding their GPUs and writing into the run folder where the resumed run trains the same SFTs again.
    Elsewhere it does nothing."""
    if not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        print(f"this SFT process will not end with its parent (prctl: {os.strerror(ctypes.get_errno())}): after a "
              "kill, end it by hand", file=sys.stderr)
    if os.getppid() != parent:  # the parent ended before the call: no signal will come
        os.kill(os.getpid(), signal.SIGKILL)

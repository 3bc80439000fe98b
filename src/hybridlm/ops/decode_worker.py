"""The second core's worker for decoding: a thread that streams half of each large GEMV
(ops/gemv_split.py) while a token is decoded, when a second core is free.

`offer()` runs before each whole-step token (ops/decode_program.py). It wakes the worker when
  - torch may use two or more threads (`torch.set_num_threads(1)` and `--threads 1` keep one core;
    read per token),
  - the process may run on two or more CPUs, and HYBRIDLM_DECODE_WORKER is not "off" (or "0"),
  - no other process has a thread runnable for the spare core (Linux: /proc/loadavg's running
    count less this process's running threads, read at most every CHECK_S seconds), and
  - callers waited on the worker fewer than STALLS_TOLERATED times since the last check (a stall: its
    core was taken while it held a task, by another process here or, on a VM, by the host).
A stall or another task stops the worker for BACKOFF_S seconds; the thread count or the variable,
until they allow it again. The worker spins while it serves, yields its core to any other runnable
thread once it has waited SPIN_CYCLES (ops/gemv_split.py), and goes to sleep IDLE_CYCLES after the
last task, so it costs nothing between generations. It needs the GIL only to enter its loop, which
the program's kernel releases while it runs. The result is the same bit for bit with or without it.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

import torch

from . import gemv_split
from .atomics import SPINNING
from .gemv_split import ACTIVE, MAILBOX, OWNER, STALLS, STATE, STOP

IDLE_CYCLES = 5_000_000  # ~2 ms of the time-stamp counter without a task: back to sleep
CHECK_S = 0.25  # how often the spare core's load is read while decoding
BACKOFF_S = 1.0  # how long the worker stays stopped after it was found not free
STALLS_TOLERATED = 2  # stalls within one CHECK_S that stop it (one can be a page fault or a timer tick)
_OFF = ("off", "0", "false", "no")


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _other_tasks_running(proc: str = "/proc") -> bool:
    """Whether a thread of another process is runnable now and would want the spare core: the
    running count of /proc/loadavg ("R/T", 4th field) less this process's running threads (this
    one, the worker while it spins, torch's pool while it spins). False where /proc is not there."""
    try:
        with open(f"{proc}/loadavg") as file:
            running = int(file.read().split()[3].split("/")[0])
        ours = 0
        for task in os.listdir(f"{proc}/self/task"):
            with open(f"{proc}/self/task/{task}/stat") as file:
                ours += file.read().rpartition(")")[2].split()[0] == "R"
    except (OSError, IndexError, ValueError):
        return False
    return running - ours > _usable_cpus() - 2


class DecodeWorker:
    """The worker thread and when it runs; one per process (`WORKER`)."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stalls_seen = 0
        self._checked_at = 0.0
        self._stopped_until = 0.0
        self._permitted = False

    def permitted(self) -> bool:
        """Whether this process may use a second core for decoding: an x86 CPU on Linux or macOS
        (atomics.SPINNING), two usable CPUs, and HYBRIDLM_DECODE_WORKER not "off" (read every CHECK_S
        while decoding)."""
        if not SPINNING or os.environ.get("HYBRIDLM_DECODE_WORKER", "").lower() in _OFF:
            return False
        return _usable_cpus() >= 2

    def offer(self) -> None:
        """Before a token: wake the worker if a second core is free, else make sure it stops."""
        now = time.monotonic()
        threads = torch.get_num_threads()  # per token: a change of the thread count applies at once
        if now - self._checked_at > CHECK_S:
            self._checked_at = now
            self._permitted = self.permitted()
            stalls, self._stalls_seen = int(MAILBOX[STALLS]) - self._stalls_seen, int(MAILBOX[STALLS])
            wanted = self._permitted and threads >= 2
            if wanted and (stalls >= STALLS_TOLERATED or _other_tasks_running()):  # /proc read only if wanted
                self._stopped_until = now + BACKOFF_S
        if not self._permitted or threads < 2 or now < self._stopped_until:
            self.stop()
        elif not MAILBOX[ACTIVE]:
            self._start()

    def wake_and_wait(self, seconds: float = 0.1) -> bool:
        """`offer` with every check made now, then wait (the GIL released) until the worker serves;
        whether it does."""
        self._checked_at = 0.0
        self.offer()
        deadline = time.monotonic() + seconds
        while not self.serving() and self._thread is not None and time.monotonic() < deadline:
            time.sleep(0.0005)
        return self.serving()

    def serving(self) -> bool:
        return bool(MAILBOX[ACTIVE])

    def stop(self) -> None:
        """Ask the worker to leave its loop (it finishes the task it holds first)."""
        if self._thread is not None:
            MAILBOX[STOP] = 1
            self._wake.clear()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="hybridlm-decode-worker", daemon=True)
                self._thread.start()
            MAILBOX[STOP] = 0
            self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if not MAILBOX[STOP]:
                gemv_split.serve(IDLE_CYCLES)  # releases the GIL while it serves

    def _after_fork(self) -> None:
        """In a forked child: no worker thread; a task the parent had in flight is not the child's."""
        self.__init__()
        MAILBOX[OWNER] = MAILBOX[STATE] = MAILBOX[ACTIVE] = MAILBOX[STOP] = 0


WORKER = DecodeWorker()
os.register_at_fork(after_in_child=WORKER._after_fork)
atexit.register(WORKER.stop)

"""Torch's intra-op threads for one call (``n_jobs``), and a default for shared cores.

torch spreads each operation over its intra-op threads (OpenMP), which wait for each other
by spinning. On cores that other processes also use, a thread that loses its core holds
the others back: on 2 cores next to 2 CPU-bound processes, sampling with 2 threads ran
10 to 30 times slower than with 1 (``docs/benchmarks.md``). One thread loses at most the
parallel speed-up on an idle machine, so the default errs on the side of fewer threads.

``n_jobs`` follows scikit-learn: a positive int is a number of threads, ``-1`` all the
usable cores, ``-2`` all but one, and so on; ``None`` applies :func:`auto_threads` at the
start of each call.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator

import torch

__all__ = ["auto_threads", "resolve_n_jobs", "torch_threads", "usable_cpus"]

# A load that shares the cores for less than this (in runnable processes) is not counted.
LOAD_TOLERANCE = 0.25


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _load() -> float:
    """Runnable processes over the last minute (``os.getloadavg()[0]``); 0 if unknown."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def _running_others() -> int | None:
    """Processes runnable right now besides this one (``/proc/loadavg``); None if unknown."""
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            running = int(handle.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)


def auto_threads(cpus: int | None = None, load: float | None = None,
                 running_others: int | None = -1) -> int:
    """The default number of threads: the cores that other processes leave free.

    ``threads = clip(cpus - ceil(busy - LOAD_TOLERANCE), 1, cpus)`` with ``busy`` the load
    of other processes: the one-minute load average, but no more than the processes
    runnable right now besides this one (the load average also counts this process's own
    recent work, which must not make it shy of an idle machine). So an idle machine gets
    every core, and each CPU-bound neighbour takes one away, down to a single thread.

    Parameters
    ----------
    cpus : int or None
        Usable cores; None reads this process's affinity mask.
    load : float or None
        One-minute load average; None reads ``os.getloadavg()``.
    running_others : int or None, default=-1
        Runnable processes besides this one; ``-1`` reads ``/proc/loadavg``, None means
        unknown (the load average alone then counts).
    """
    cpus = usable_cpus() if cpus is None else cpus
    load = _load() if load is None else load
    if running_others == -1:
        running_others = _running_others()
    busy = load if running_others is None else min(load, float(running_others))
    return int(min(cpus, max(1, cpus - math.ceil(busy - LOAD_TOLERANCE))))


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Threads for ``n_jobs`` (scikit-learn's meaning), at least 1.

    Raises
    ------
    ValueError
        ``n_jobs == 0``.
    """
    if n_jobs is None:
        return auto_threads()
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 has no meaning: use a positive number of threads, "
                         "-1 for all cores, or None for the default.")
    if n_jobs < 0:
        return max(1, usable_cpus() + 1 + n_jobs)
    return int(n_jobs)


_lock = threading.Lock()
_active = 0
_saved: int | None = None


@contextlib.contextmanager
def torch_threads(n_jobs: int | None) -> Iterator[int]:
    """Run the block with torch's intra-op threads set by ``n_jobs``; restore them after.

    torch's setting is global to the process. Calls that overlap (estimators fitted in
    threads, e.g. by joblib's threading backend) share it: the first one in saves the
    caller's setting and the last one out restores it, so overlapping calls never leave
    behind a count that nobody asked for; one that leaves while others run puts back the
    count it found (a nested block hands its caller's setting back).

    Yields
    ------
    int
        The number of threads set.
    """
    global _active, _saved
    threads = resolve_n_jobs(n_jobs)
    with _lock:
        found = torch.get_num_threads()
        if _active == 0:
            _saved = found
        _active += 1
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                torch.set_num_threads(_saved if _saved is not None else found)
                _saved = None
            else:
                torch.set_num_threads(found)

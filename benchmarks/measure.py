"""Timing: medians of repeated runs with their range, and the machine they ran on."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Timing:
    """Seconds of `repeats` calls: the median is the figure, min and max show the spread."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": min(self.seconds), "max_s": max(self.seconds), "runs": self.seconds}


def time_calls(call: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """Wall seconds of `repeats` calls of `call`, after `warmup` untimed ones (imports, first-call allocations)."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return Timing(seconds)


def time_pair(ours: Callable[[], Any], direct: Callable[[], Any], repeats: int) -> tuple[Timing, Timing]:
    """Both sides timed alternately (ours, direct, ours, ...) so that drift on a shared machine hits both alike."""
    ours(), direct()  # warm-up of both
    a, b = [], []
    for _ in range(repeats):
        for call, into in ((ours, a), (direct, b)):
            start = time.perf_counter()
            call()
            into.append(time.perf_counter() - start)
    return Timing(a), Timing(b)


@dataclass
class Figure:
    """One row of results/benchmarks.md."""

    group: str
    name: str
    value: float
    unit: str
    spread: tuple[float, float] | None = None  # (min, max) of the same unit
    target: str = ""
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(a: Timing, b: Timing) -> tuple[float, tuple[float, float]]:
    """a / b of the medians, and its spread pairing the extremes (best a / worst b, worst a / best b)."""
    return a.median / b.median, (min(a.seconds) / max(b.seconds), max(a.seconds) / min(b.seconds))


def ratio_figure(group: str, name: str, ours: Timing, direct: Timing, limit: float = 1.10, **detail) -> Figure:
    """ours / direct, with `ratio`'s spread."""
    value, spread = ratio(ours, direct)
    detail = {"dermabench": ours.to_dict(), "direct": direct.to_dict(), **detail}
    return Figure(group, name, value, "×", spread, f"≤ {limit:.2f}", value <= limit, detail)


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gib = None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(memory_gib, 1) if memory_gib else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_at_start": load,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None

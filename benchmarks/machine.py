"""Shared helper of the benchmark scripts: what machine this is, and how fast it can multiply.

* :func:`describe` — CPU model (``/proc/cpuinfo`` or ``platform``), logical cores, torch threads,
  memory, GPU, OS, Python and torch versions (the same facts ``mdmt bench`` records).
* :func:`mm_peak` — the machine's practical matmul limit, measured in the same run as the figure it
  is compared with: ``torch.mm`` on two ``n × n`` float32 matrices (default 2048), best of
  ``repeats`` timed calls after warm-up, ``2·n³`` floating-point operations per call.

Utilisation of a workload = its achieved FLOP/s ÷ :func:`mm_peak`'s FLOP/s.

Run alone to print both::

    python benchmarks/machine.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    from mdmt.bench.harness import machine_description, machine_line
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mdmt.bench.harness import machine_description, machine_line

__all__ = ["describe", "describe_line", "mm_peak", "synchronize"]


def describe() -> dict[str, Any]:
    """Facts about this machine and the library versions (see :func:`mdmt.bench.machine_description`)."""
    return machine_description()


def describe_line(m: dict[str, Any] | None = None) -> str:
    """One line, e.g. ``"AMD EPYC; 2 logical cores; torch threads 2; ...; torch 2.13.0+cpu, ..."``."""
    return machine_line(m if m is not None else describe())


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU), so wall-clock timings are complete."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def mm_peak(n: int = 2048, repeats: int = 8, warmup: int = 2, device: str = "cpu",
            dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Measured peak FLOP/s of ``torch.mm`` on ``n × n`` matrices.

    Args:
        n: matrix size (2048 by default).
        repeats: timed calls; the best (fastest) one gives the peak.
        warmup: untimed calls first (thread pool start-up, caches, clocks).
        device, dtype: where and in which precision.

    Returns:
        ``{"flops_per_sec": best, "median_flops_per_sec": ..., "n", "repeats", "dtype", "device",
        "threads", "seconds_best"}``.

    Example::

        >>> r = mm_peak(n=256, repeats=2, warmup=1)
        >>> r["flops_per_sec"] > 0
        True
    """
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=torch.float32).to(dev, dtype)
    b = torch.randn(n, n, generator=g, dtype=torch.float32).to(dev, dtype)
    out = torch.empty(n, n, device=dev, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    synchronize(dev)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(dev)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    best = min(times)
    return {
        "flops_per_sec": flops / best,
        "median_flops_per_sec": flops / statistics.median(times),
        "seconds_best": best,
        "n": n,
        "repeats": len(times),
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(dev),
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    import os

    torch.set_num_threads(os.cpu_count() or 1)
    print(describe_line())
    r = mm_peak()
    print(f"torch.mm {r['n']}x{r['n']} {r['dtype']}: best {r['flops_per_sec'] / 1e9:.1f} GFLOP/s, "
          f"median {r['median_flops_per_sec'] / 1e9:.1f} GFLOP/s over {r['repeats']} calls")

"""Peak memory of one block of work, for benchmarks: CUDA allocator peaks or sampled CPU RSS.

On CUDA the allocator keeps exact statistics: the peak is `max_memory_allocated` over the block
minus what was allocated when it started.

On CPU there is no allocator statistic, so a thread samples the process's resident set size
(/proc/self/statm) every `interval` seconds while the block runs; the peak is the largest sample
minus the RSS at the start. Two things keep that honest: `release_freed_memory()` makes glibc
return freed large blocks to the system at once (a fixed mmap threshold, so memory one method
freed is not silently reused by the next), and every measured block starts after a garbage
collection. Samples can miss a spike shorter than `interval`; torch releases the GIL in its
kernels, so the sampler runs while they work.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def release_freed_memory(*, mmap_threshold: int = 1 << 16) -> bool:
    """Allocations above `mmap_threshold` bytes are mmapped and unmapped when freed (glibc only;
    returns False where mallopt is unavailable)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, mmap_threshold))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class PeakMemory:
    """Filled in when the `measure_peak_memory` block ends."""

    peak_bytes: int = 0

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


@contextmanager
def measure_peak_memory(*, device: torch.device, interval: float = 0.001):
    """Yields a `PeakMemory` whose `peak_bytes` is the block's peak above its starting point."""
    gc.collect()
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.peak_bytes = torch.cuda.max_memory_allocated(device) - start
        return
    start = _rss_bytes()
    peak = [start]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        peak[0] = max(peak[0], _rss_bytes())
        running.clear()
        sampler.join()
        result.peak_bytes = peak[0] - start

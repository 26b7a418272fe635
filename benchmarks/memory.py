"""Peak memory of one call, and out-of-memory as a recorded outcome.

GPU: torch.cuda's peak allocated bytes. CPU: the process's peak resident set
(Linux /proc), with glibc told to map every block of 128 KB or more on its own so
that freed blocks leave the resident set and a later peer's peak is its own, and the
fused CPU plans' cache of freed buffers emptied before each measurement (a buffer they
reuse is counted as one they allocate)."""

import contextlib
import ctypes
import gc
import resource
from collections.abc import Callable

import torch

_M_MMAP_THRESHOLD = -3


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def prepare_cpu_accounting() -> None:
    with contextlib.suppress(OSError):  # not glibc: peaks may then read low after large frees
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def _release_free_heap() -> None:
    """Gives glibc's free heap pages back to the kernel: a block glibc hands out from its
    free lists (the earlier peers' freed memory, still resident) would not raise the
    resident set, and the peak would read low (it read 0 for the fused concat_conv_mi)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def limit_cpu_memory(gigabytes: float) -> None:
    """Make CPU allocations past `gigabytes` more than now fail (and be recorded as
    out of memory) instead of waking the kernel's OOM killer."""
    limit = _status("VmSize:") + int(gigabytes * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory while fn runs, above what was in use before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        del result
        return torch.cuda.max_memory_allocated(device) - before
    if hasattr(torch.ops.dim_fused, "empty_cpu_cache"):
        torch.ops.dim_fused.empty_cpu_cache()  # the fused plans' reused buffers count as new here
    _release_free_heap()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak resident set
    before = _status("VmRSS:")
    result = fn()
    del result
    return _status("VmHWM:") - before


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)

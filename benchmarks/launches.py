"""Device launches and host syncs per call, counted on the CPU, and the host overhead per
call: what decides a fused op's speed on a GPU when its useful work takes microseconds.

A count is not a timing: it is deterministic, so it belongs in the tests
(tests/benchmarks/test_launches.py holds each op to its budget). It is taken from
torch.profiler's event tree while the call runs on CPU tensors, on the code path the GPU
takes (the Triton backend under the Triton interpreter; the C++ plans, whose host code is
the same on either device). One launch is counted for

- each Triton kernel launch (under the interpreter, whose own tensor traffic inside a
  launch is not counted);
- each device piece of a C++ plan: a ``dim_fused::<piece>`` profiler scope that is not a
  registered op (csrc records one around every piece that is a kernel on CUDA: the
  first layer's gather, a GEMM);
- each ATen op that computes and calls no other op that computes (a ``copy_`` inside a
  ``clone``, a ``fill_`` inside ``zeros``): views, allocations and metadata launch nothing.

ATen ops that read a tensor's value on the host (``item``, ``nonzero``, ``equal``...) are
counted as host syncs: each stalls the host until the device is done. The C++ plans read
values on the CPU only (a permutation's range check; free there), which the counts name.

    TRITON_INTERPRET=1 python -m benchmarks.launches [--out FILE.md]
    python -m benchmarks.launches --device cuda      # on a GPU: the kernels it runs (gpu_check.sh)
"""

import argparse
import contextlib
import dataclasses
import functools
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import dim_fused

from . import cases
from .configs import MI_BOUND_ESTIMATORS, Config

# ATen ops that launch nothing: views, allocations, metadata.
NO_LAUNCH = frozenset(
    f"aten::{name}"
    for name in (  # noqa: SIM905 (words read better than a list literal of 42 strings)
        "alias _reshape_alias _unsafe_view as_strided as_strided_ chunk contiguous detach empty empty_like item "
        "empty_strided expand expand_as flatten is_nonzero is_same_size lift_fresh movedim narrow new_empty "
        "new_empty_strided numpy_T permute reshape resize_ result_type select set_ size slice split squeeze "
        "stride t to _to_copy transpose unbind unflatten unsqueeze view view_as"
    ).split()
)
# ATen ops that read a tensor on the host, a device-to-host sync off the CPU (item and
# allclose come down to _local_scalar_dense).
HOST_SYNCS = frozenset(
    f"aten::{name}"
    for name in "_local_scalar_dense nonzero nonzero_static masked_select unique _unique2 equal".split()  # noqa: SIM905
)
TRITON_SCOPE = "triton::"
HOST_CHECK = "dim_fused::host_check"  # CPU-only work (checks.host_check, DIM_FUSED_HOST_CHECK)


@dataclasses.dataclass
class Launches:
    """What one call did: device launches by name, host syncs by op, and the CPU-only host
    checks it made (their work is neither counted as launches nor as syncs)."""

    kernels: Counter = dataclasses.field(default_factory=Counter)
    syncs: Counter = dataclasses.field(default_factory=Counter)
    host_checks: int = 0

    @property
    def total(self) -> int:
        return sum(self.kernels.values())

    def describe(self) -> str:
        parts = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(self.kernels.items()))
        return f"{self.total} launches ({parts})"


@functools.cache
def _is_op(name: str) -> bool:
    """Whether a profiler scope ``dim_fused::x`` is a registered op (else a device piece)."""
    namespace, _, op = name.partition("::")
    return hasattr(getattr(torch.ops, namespace, None), op)


@contextlib.contextmanager
def _scoped_triton_launches() -> Iterator[None]:
    """Each interpreted Triton launch inside a ``triton::<kernel>`` profiler scope."""
    try:
        from triton.runtime import interpreter
    except ImportError:  # no Triton: nothing to scope
        yield
        return
    launch = interpreter.GridExecutor.__call__

    def scoped(self, *args, **kwargs):
        with record_function(TRITON_SCOPE + self.fn.__name__):
            return launch(self, *args, **kwargs)

    interpreter.GridExecutor.__call__ = scoped
    try:
        yield
    finally:
        interpreter.GridExecutor.__call__ = launch


def _computes(event) -> bool:
    return event.name.startswith("aten::") and event.name not in NO_LAUNCH and event.name not in HOST_SYNCS


def _tally(event, launches: Launches) -> bool:
    """Adds ``event``'s subtree to ``launches``; whether anything in it computes."""
    name = event.name
    if name == HOST_CHECK:
        launches.host_checks += 1
        return False
    if name == "aten::to" and event.cpu_parent is not None and event.cpu_parent.name.startswith("aten::"):
        return False  # an op converting its Python scalar operand: host work, no launch
    if name.startswith(TRITON_SCOPE) or (name.startswith("dim_fused::") and not _is_op(name)):
        launches.kernels[name] += 1  # a kernel: what it calls is its own business
        return True
    if name in HOST_SYNCS:
        launches.syncs[name] += 1
    below = [_tally(child, launches) for child in event.cpu_children]
    if any(below) or not _computes(event):
        return any(below)
    launches.kernels[name] += 1
    return True


def count(fn: Callable[[], object]) -> Launches:
    """The launches and host syncs of one ``fn()`` (run it once before, so that one-time
    work such as Triton's compilation is not counted)."""
    with _scoped_triton_launches(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    launches = Launches()
    for event in prof.events():
        if event.cpu_parent is None:
            _tally(event, launches)
    return launches


def count_on_gpu(fn: Callable[[], object]) -> Launches:
    """The kernels (and memsets and copies) one ``fn()`` runs on a CUDA device, from
    torch.profiler's device events, and its host syncs, from torch's sync debug mode (the
    GPU run's check of what ``count`` predicts on the CPU)."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    launches = Launches()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            launches.kernels[event.name[:60]] += 1
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except RuntimeError as error:  # the first sync a call makes
        launches.syncs[str(error).splitlines()[0][:80]] += 1
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return launches


def host_overhead_us(fn: Callable[[], object], device: torch.device, *, repeats: int = 50, rounds: int = 3) -> float:
    """Microseconds per ``fn()``, the median of ``rounds`` means over ``repeats`` calls: with
    tiny inputs, the Python and dispatcher cost of a call (on a GPU the launches queue
    asynchronously; the device is waited for once per round)."""
    fn()
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        means.append((time.perf_counter() - start) / repeats * 1e6)
    return sorted(means)[len(means) // 2]


# The launch budget of each op's forward+backward on the fused GPU paths (issue 21).
BUDGET = {"concat_conv_mi": 12, "dot_product_mi": 6, "mi_bound": 3}
# Small settings of each op: counts do not depend on sizes (the tests check that), and the
# Triton interpreter stays quick.
SETTINGS = [
    Config("mi_bound", "small", batch=4, locations=6, num_negatives=2, estimators=MI_BOUND_ESTIMATORS),
    Config("dot_product_mi", "small", batch=4, locations=6, units=8, estimators=("jsd", "dv", "infonce")),
    Config(
        "concat_conv_mi",
        "small",
        batch=4,
        locations=6,
        channels=3,
        global_dim=2,
        hidden=(8, 8),
        estimators=("jsd", "dv", "infonce"),
    ),  # fmt: skip
]


def paths(device: torch.device | str = "cpu") -> list[str]:
    """The peers counted on ``device``: the reference and the fused backends that run there
    (on a CPU the Triton backend only under the interpreter)."""
    return ["reference", *(b for b in cases.FUSED if b in dim_fused.available_backends(device))]


def forward_backward(
    config: Config, peer: str, estimator: str, device: torch.device | str = "cpu"
) -> Callable[[], object]:
    """One forward+backward of ``peer`` on fresh inputs of ``config`` on ``device``, the
    seed gradient given (making it, a fill, is the caller's launch, once per loss)."""
    device = torch.device(device)
    leaves, wrt = cases.differentiable(cases.make_inputs(config, device, torch.float32))
    fn, seed = cases.peer_fn(config.op, peer), torch.ones((), device=device)
    return lambda: torch.autograd.grad(fn(*leaves, estimator), wrt, grad_outputs=seed)


def table(settings: list[Config] = SETTINGS, device: torch.device | str = "cpu") -> list[dict]:
    """A row per (op, estimator, peer): launches (counted on the CPU, or the kernels a CUDA
    device ran), host syncs and time per call."""
    device = torch.device(device)
    rows = []
    for config in settings:
        for estimator, peer in itertools.product(config.estimators, paths(device)):
            fn = forward_backward(config, peer, estimator, device)
            fn()  # compiles what compiles once
            launches = count_on_gpu(fn) if device.type == "cuda" else count(fn)
            interpreted = peer == "triton" and device.type == "cpu"  # not a GPU's host time
            rows.append({
                "op": config.op, "estimator": estimator, "peer": peer, "launches": launches.total,
                "budget": BUDGET[config.op] if peer == "triton" else None,
                "syncs": sum(launches.syncs.values()), "detail": launches.describe(),
                "host_us": None if interpreted else host_overhead_us(fn, device),
            })  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| op | estimator | peer | launches | budget | host syncs | us / call (tiny inputs) | launches by kernel |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        budget = "" if r["budget"] is None else str(r["budget"])
        host = "" if r["host_us"] is None else f"{r['host_us']:.0f}"
        detail = r["detail"].split("(", 1)[-1].rstrip(")")
        cells = [r["op"], r["estimator"], r["peer"], str(r["launches"]), budget, str(r["syncs"]), host, detail]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description="Device launches, host syncs and host time per forward+backward of each op, counted on the "
        "CPU (run with TRITON_INTERPRET=1 to count the Triton backend's GPU path too)."
    )
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument(
        "--device", default="cpu", help="cuda: count the kernels a GPU runs (the profiler's device events) instead"
    )
    args = parser.parse_args(argv)
    rows = table(device=args.device)
    text = markdown(rows)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return rows


if __name__ == "__main__":
    main()

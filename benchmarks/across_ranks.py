"""What ``dot_product_mi(..., across_ranks=True)`` sends between ranks, against gathering
every code: ``python -m benchmarks.across_ranks [--ranks 2 4 8] [--out FOLDER]``.

R gloo processes on this machine each take B images' codes and run forward+backward of
the whole batch's InfoNCE (and DV) estimate two ways, in one process group:

- ``merge``: ``dot_product_mi(local, global, across_ranks=True)``: the global codes are
  gathered, the ranks merge per-global-row statistics, local codes never move;
- ``gather all``: what contrastive-learning code usually does: ``gather_with_grad`` of the
  local and the global codes, then the fused op on the whole batch on every rank.

Measured per step: the values each rank hands to torch.distributed's collectives (counted
by wrapping them) and the bytes that crossed the loopback interface, every rank's
together (/proc/net/dev: gloo's own algorithms and framing included; keep the machine
otherwise quiet), and the step's time (slowest rank, after a warm-up step; on a shared CPU
the gather's extra compute dominates, not its traffic). Both methods are checked to agree.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dim_fused

COLLECTIVES = ("all_reduce", "all_gather", "broadcast", "reduce_scatter", "all_to_all")


class CountedValues:
    """Wraps torch.distributed's collectives: the values this rank contributes to each
    (an all_reduce's tensor, an all_gather's input), added up by collective."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def __enter__(self) -> "CountedValues":
        for name, original in self.originals.items():
            setattr(dist, name, self._counting(name, original))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self.originals.items():
            setattr(dist, name, original)

    def _counting(self, name, original):
        def counted(*args, **kwargs):
            tensor = args[1] if name == "all_gather" else args[0]
            key = f"{name} {tensor.dtype}".replace("torch.", "")
            self.values[key] = self.values.get(key, 0) + tensor.numel()
            return original(*args, **kwargs)

        return counted

    def bytes(self) -> int:
        sizes = {"float32": 4, "float64": 8, "int64": 8, "bfloat16": 2, "float16": 2}
        return sum(count * sizes[key.split()[1]] for key, count in self.values.items())


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[8])  # transmitted bytes (on loopback, = received)
    return 0


def step(method: str, local: torch.Tensor, global_codes: torch.Tensor, estimator: str, backend: str):
    local, global_codes = local.clone().requires_grad_(), global_codes.clone().requires_grad_()
    if method == "merge":
        value = dim_fused.dot_product_mi(local, global_codes, estimator=estimator, across_ranks=True, backend=backend)
    else:
        every_local = dim_fused.distributed.gather_with_grad(local)
        every_global = dim_fused.distributed.gather_with_grad(global_codes)
        value = dim_fused.dot_product_mi(every_local, every_global, estimator=estimator, backend=backend)
    value.backward()
    return value.detach(), local.grad


def rank_main(rank: int, world: int, init_file: str, args: argparse.Namespace, results) -> None:
    os.environ.setdefault("DIM_FUSED_QUIET", "1")
    torch.set_num_threads(1)  # R processes share this machine's cores
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600)
    )
    try:
        generator = torch.Generator().manual_seed(rank)
        local = torch.randn(args.batch, args.units, args.locations, generator=generator) / args.units**0.5
        global_codes = torch.randn(args.batch, args.units, generator=generator)
        out = {}
        for estimator in args.estimators:
            values = {}
            for method in ("merge", "gather all"):
                step(method, local, global_codes, estimator, args.backend)  # warm-up: connections, caches
                dist.barrier()
                before, start = loopback_bytes(), time.perf_counter()
                with CountedValues() as counted:
                    value, d_local = step(method, local, global_codes, estimator, args.backend)
                elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                dist.barrier()
                values[method] = (value, d_local)
                out[(estimator, method)] = {
                    "values_per_rank": counted.values,
                    "bytes_per_rank": counted.bytes(),
                    "loopback_bytes": loopback_bytes() - before,  # every rank's, read by each
                    "step_s": elapsed.item(),
                }
            (merged, d_merged), (gathered, d_gathered) = values["merge"], values["gather all"]
            torch.testing.assert_close(merged, gathered, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(d_merged, d_gathered, rtol=1e-3, atol=1e-6)
        results[rank] = out
    finally:
        dist.destroy_process_group()


def run(world: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(rank_main, args=(world, f"{folder}/init", args, results), nprocs=world, join=True)
        return dict(results[0])


def human(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.3g} {unit}"
        count /= 1000
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.across_ranks", description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--batch", type=int, default=64, help="images per rank (default: the paper's 64)")
    parser.add_argument("--locations", type=int, default=64, help="L (default 64: an 8x8 map)")
    parser.add_argument("--units", type=int, default=2048, help="E (default: the official critic's 2048)")
    parser.add_argument("--estimators", nargs="+", default=["infonce", "dv"])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", help="write table.md and results.json here")
    args = parser.parse_args(argv)
    rows, records = [], []
    header = (
        "| R | estimator | method | values per rank (collective: count) | bytes per rank | loopback bytes, all ranks "
        "| step (s) |\n|---|---|---|---|---:|---:|---:|"
    )
    for world in args.ranks:
        measured = run(world, args)
        for (estimator, method), m in measured.items():
            values = ", ".join(f"{k}: {v:,}" for k, v in m["values_per_rank"].items())
            rows.append(
                f"| {world} | {estimator} | {method} | {values} | {human(m['bytes_per_rank'])} "
                f"| {human(m['loopback_bytes'])} | {m['step_s']:.3f} |"
            )
            records.append({"ranks": world, "estimator": estimator, "method": method, **m})
        print("\n".join(rows[-len(measured) :]), flush=True)
    command = shlex.join(["python", "-m", "benchmarks.across_ranks", *(argv if argv is not None else sys.argv[1:])])
    table = (
        f"B = {args.batch} images per rank, L = {args.locations}, E = {args.units}, float32, forward+backward, "
        f"backend {args.backend}, gloo on {platform.node() or 'this machine'}; `{command}`\n\n{header}\n"
        + "\n".join(rows)
        + "\n"
    )
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table)
        meta = {"command": command, "torch": torch.__version__, "batch": args.batch, "locations": args.locations}
        (out / "results.json").write_text(json.dumps({**meta, "units": args.units, "rows": records}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

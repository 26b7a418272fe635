"""Benchmark report: every fused op against its peers, side by side in one process.

Each fused result (value and gradients) is checked against the float64 reference
before it is timed; a wrong kernel is reported, never timed. Each peer is then run
once to warm up (and compile) and repeatedly to time it; peak memory is measured
after every timing is done, so its accounting never slows a timed run. A peer that
runs out of memory is recorded as such.

    python -m benchmarks.report [--quick] [--out DIR] [--dtype float32] [--fp32-precision ieee] [--device cuda]

Every peer runs at one precision: in float32, cuBLAS matmuls and cuDNN convolutions are both
set to --fp32-precision (ieee by default, or tf32), and the tables say which.

Prints a summary (per op and setting, the best fused backend against each peer) and the
device launches, host syncs and time per call of each op on tiny inputs, and writes to
--out (default runs/report-quick, -full or -tiny): summary.md, table.md (every row),
launches.md, results.json and results.csv (raw numbers with device, versions, date and
command) and PNG plots (time and memory against batch size and feature-map size;
the speed-ups of the summary).
"""

import argparse
import csv
import datetime
import gc
import itertools
import json
import platform
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

import dim_fused
from dim_fused.training.graphs import GraphedStep

from . import cases, configs, launches, memory
from .ceilings import measure_ceilings
from .configs import Config
from .timing import measure, measure_interleaved

NUMERIC = ("median_ms", "q1_ms", "q3_ms", "peak_bytes")


def _rotating(steps: list) -> Callable[[], object]:
    """Calls the steps in turn, one per call."""
    turn = itertools.cycle(steps)
    return lambda: next(turn)()


def input_sets(config: Config, device: torch.device, dtype: torch.dtype) -> list[tuple]:
    """Fresh random inputs; on a GPU, enough independent sets that rotating through them
    keeps a case whose inputs fit in L2 from being timed out of a warm cache."""
    first = cases.make_inputs(config, device, dtype)
    if device.type != "cuda":
        return [first]
    l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 * 2**20
    size = sum(x.numel() * x.element_size() for x in first)
    copies = min(16, max(1, -(-4 * l2_bytes // max(size, 1))))  # rotate through >= 4x L2 when small
    return [first, *[cases.make_inputs(config, device, dtype, seed=i) for i in range(1, copies)]]


def prepare_peer(
    config: Config, peer: str, estimator: str, mode: str, inputs, device, dtype, checked: dict, graphs: bool = False
):
    """A peer ready to time (its step, run once to warm up and compile), or the row's status:
    "skipped" / "wrong result" / "out of memory" with the reason. `inputs` is a list of
    input sets, used in turn. ``graphs``: each input set's step captured as a CUDA graph
    (after one eager call) and replayed."""
    reason = cases.unavailable(peer, device)
    if peer == "reference-fp32" and dtype not in (torch.float16, torch.bfloat16):
        reason = "a half-precision run's peer: this run's reference is the fp32 one"
    if graphs and reason is None:
        reason = cases.ungraphable(peer, device)
    if reason is not None:
        return {"status": "skipped", "reason": reason}
    try:
        if peer in cases.FUSED:
            key = (config.op, config.locations, config.units, config.num_negatives, peer, estimator)
            if key not in checked:
                checked[key] = None
                try:
                    cases.check(config, peer, device, dtype, estimator)
                except cases.WrongResult as wrong:
                    checked[key] = str(wrong)
            if checked[key] is not None:
                return {"status": "wrong result", "reason": checked[key]}
        steps = [cases.step(config.op, peer, x, estimator, mode) for x in inputs]
        if graphs:
            steps = [GraphedStep(step, device, warmup=1) for step in steps]
            for step in steps:
                step()  # eager
                step()  # captured, then replayed
        fn = _rotating(steps)
        for _ in range(2):  # warm-up; compiles the torch.compile peers
            fn()
    except Exception as error:  # noqa: BLE001 - only out-of-memory is an outcome; the rest propagates
        return _out_of_memory(error, device)
    return fn


def time_peers(ready: dict, device, min_time_s: float) -> dict[str, dict]:
    """The ready peers' rows, timed interleaved (timing.measure_interleaved)."""
    try:
        timings = measure_interleaved(ready, device, min_time_s=min_time_s)
    except Exception as error:  # noqa: BLE001
        return {peer: _out_of_memory(error, device) for peer in ready}
    return {peer: {"status": "ok", **vars(t), "peak_bytes": None} for peer, t in timings.items()}


def time_peer(config: Config, peer: str, estimator: str, mode: str, inputs, device, dtype, checked: dict) -> dict:
    """One peer's row on its own (prepare_peer, then its timing)."""
    ready = prepare_peer(config, peer, estimator, mode, inputs, device, dtype, checked)
    if isinstance(ready, dict):
        return ready
    return {"status": "ok", **vars(measure(ready, device)), "peak_bytes": None}


def peak_of_peer(row: dict, config: Config, inputs, device) -> None:
    """The row's peak memory, measured on its own after every timing (see main)."""
    try:
        fn = cases.step(config.op, row["peer"], inputs[0], row["estimator"], row["mode"])
        fn()
        row["peak_bytes"] = memory.peak_extra_bytes(fn, device)
    except Exception as error:  # noqa: BLE001
        row.update(_out_of_memory(error, device))


def _out_of_memory(error: Exception, device: torch.device) -> dict:
    if not memory.is_out_of_memory(error):
        raise error
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"status": "out of memory", "reason": str(error).splitlines()[0][:200]}


def run(
    config_list: list[Config],
    device: torch.device,
    dtype: torch.dtype,
    ceilings: dict,
    progress: bool = True,
    rows: list[dict] | None = None,
    peers: list[str] | None = None,
    modes: list[str] | None = None,
    min_time_s: float = 0.2,
    graphs: bool = False,
) -> list[dict]:
    """Every case of the configs. Timings come first, in a process whose allocator is
    left as users run it; peak memory is measured afterwards (on the CPU that needs
    glibc to map every large block on its own, which slows materialising peers down
    and must not touch their timings). Rows are appended to `rows` as each case's
    timings complete, so an interrupted run still leaves the finished cases there. `peers`
    and `modes` narrow what is timed (default: every peer, both passes); ``graphs`` times
    every peer's step replayed as a CUDA graph."""
    jobs = [(c, e, m) for c in config_list for e in c.estimators for m in (modes or cases.MODES)]
    rows = [] if rows is None else rows
    checked = {}
    itemsize = torch.empty((), dtype=dtype).element_size()
    groups = []
    for config, estimator, mode in tqdm(jobs, desc="timings", unit="case", file=sys.stderr, disable=not progress):
        inputs = input_sets(config, device, dtype)
        chosen = [p for p in cases.PEERS[config.op] if peers is None or p in peers]
        prepared = {p: prepare_peer(config, p, estimator, mode, inputs, device, dtype, checked, graphs) for p in chosen}
        ready = {p: fn for p, fn in prepared.items() if not isinstance(fn, dict)}
        outcome = {p: v for p, v in prepared.items() if isinstance(v, dict)}
        outcome.update(time_peers(ready, device, min_time_s))
        del ready, prepared
        group = []
        for peer in chosen:
            row = {
                "op": config.op,
                "config": config.name,
                "series": config.series,
                "batch": config.batch,
                "locations": config.locations,
                "units": config.units,
                "num_negatives": config.num_negatives,
                "estimator": estimator,
                "mode": mode,
                "peer": peer,
                "flop": cases.flops(config, mode),
                "bytes": cases.bytes_moved(config, itemsize, mode),
                **outcome[peer],
            }
            group.append(row)
        del inputs
        _derive(group, ceilings)
        rows += group
        groups.append((config, group))
    if device.type == "cpu":
        memory.prepare_cpu_accounting()
    for config, group in tqdm(groups, desc="peak memory", unit="case", file=sys.stderr, disable=not progress):
        inputs = [cases.make_inputs(config, device, dtype)]
        for row in group:
            if row["status"] == "ok":
                peak_of_peer(row, config, inputs, device)
        del inputs
        _derive(group, ceilings)
    return rows


def _derive(group: list[dict], ceilings: dict) -> None:
    """Ratios against the reference and the compiled reference of the same case (the faster of
    the two compile modes as "best_compiled"), throughputs, and the time against the op's
    FLOPs at the best GEMM rate measured for the run's dtype ("floor_ratio")."""
    by_peer = {r["peer"]: r for r in group if r["status"] == "ok"}
    gemm_ceiling = ceilings.get("gemm_tflop_per_s")
    compiled = [by_peer[p] for p in cases.COMPILED if p in by_peer]
    if compiled:
        by_peer_best = min(compiled, key=lambda r: r["median_ms"])
    for row in by_peer.values():
        seconds = row["median_ms"] / 1e3
        row["tflop_per_s"] = row["flop"] / seconds / 1e12 if row["flop"] else None
        row["gb_per_s"] = row["bytes"] / seconds / 1e9
        row["gemm_fraction"] = row["tflop_per_s"] / gemm_ceiling if row["tflop_per_s"] and gemm_ceiling else None
        row["floor_ratio"] = 1 / row["gemm_fraction"] if row["gemm_fraction"] else None
        row["copy_fraction"] = row["gb_per_s"] / ceilings["copy_gb_per_s"]
        if compiled:
            row["speedup_vs_best_compiled"] = by_peer_best["median_ms"] / row["median_ms"]
            row["best_compiled"] = by_peer_best["peer"]
        for peer in ("reference", "reference-fp32", *cases.COMPILED, "official", "seed", "matmuls"):
            if peer in by_peer:
                row[f"speedup_vs_{peer}"] = by_peer[peer]["median_ms"] / row["median_ms"]
                peer_peak, own_peak = by_peer[peer]["peak_bytes"], row["peak_bytes"]
                if peer_peak is not None and own_peak is not None and peer_peak >= 2**20:
                    row[f"memory_vs_{peer}"] = own_peak / peer_peak  # below a MiB the ratio is page noise


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| op | config | estimator | mode | peer | median ms | IQR ms | x vs reference | x vs compiled "
        "| peak MB | memory / reference | TFLOP/s | GB/s | of GEMM ceiling | of copy ceiling |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['op']} | {r['config']} | {r['estimator']} | {r['mode']} | {r['peer']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r['reason'][:70]} |" + " |" * 9)
            continue
        peak = None if r["peak_bytes"] is None else r["peak_bytes"] / 2**20
        lines.append(
            f"{head} {r['median_ms']:.3f} | {r['q3_ms'] - r['q1_ms']:.3f}"
            f" | {_fmt(r.get('speedup_vs_reference'), '.2f')}"
            f" | {_fmt(r.get('speedup_vs_compiled'), '.2f')} | {_fmt(peak, '.1f')}"
            f" | {_fmt(r.get('memory_vs_reference'), '.3f')} | {_fmt(r['tflop_per_s'], '.3f')} | {r['gb_per_s']:.1f}"
            f" | {_fmt(r['gemm_fraction'], '.0%')} | {r['copy_fraction']:.0%} |"
        )
    return "\n".join(lines)


def plots(rows: list[dict], out: Path) -> list[Path]:
    """Time and memory against the sweep axis, one line per peer, out-of-memory points
    marked; and the speed-ups of the summary (speedup_plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sweeps = {(r["op"], r["series"], r["estimator"]) for r in rows if r["series"] and r["mode"] == "forward+backward"}
    for op, series, estimator in sorted(sweeps):
        key = (op, series, estimator, "forward+backward")
        chosen = [r for r in rows if (r["op"], r["series"], r["estimator"], r["mode"]) == key]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for peer in dict.fromkeys(r["peer"] for r in chosen):
            mine = [r for r in chosen if r["peer"] == peer]
            ok = [r for r in mine if r["status"] == "ok"]
            oom = [r for r in mine if r["status"] == "out of memory"]
            if not ok and not oom:
                continue
            for axis, key, scale in ((axes[0], "median_ms", 1.0), (axes[1], "peak_bytes", 2**-20)):
                known = [r for r in ok if r[key] is not None]  # an interrupted run may lack peaks
                (line,) = axis.plot([r[series] for r in known], [r[key] * scale for r in known], marker="o", label=peer)
                if oom:
                    top = max([r[key] * scale for r in known] or [1.0])
                    axis.scatter([r[series] for r in oom], [top] * len(oom), marker="x", s=80, color=line.get_color())
        for axis, label in ((axes[0], "forward+backward time (ms)"), (axes[1], "peak extra memory (MB)")):
            axis.set_xscale("log", base=2)
            if all(y > 0 for line in axis.get_lines() for y in line.get_ydata()):
                axis.set_yscale("log")
            axis.set_xlabel(series)
            axis.set_ylabel(label)
            axis.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{op}, {estimator}: x = out of memory")
        fig.tight_layout()
        path = out / f"{op}-{series}-{estimator}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    path = speedup_plot(rows, out)
    if path is not None:
        written.append(path)
    return written


def best_fused(rows: list[dict]) -> list[dict]:
    """Per (op, config, estimator), forward+backward: the fastest fused backend's row,
    which carries its ratios against every peer of its case."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r["mode"] != "forward+backward" or r["peer"] not in cases.FUSED or r["status"] != "ok":
            continue
        key = (r["op"], r["config"], r["estimator"])
        if key not in best or r["median_ms"] < best[key]["median_ms"]:
            best[key] = r
    return list(best.values())


def summary(rows: list[dict]) -> str:
    """What a reader takes in at a glance: per op and setting, the best fused backend
    against each peer (forward+backward), the faster torch.compile mode, its time against
    the op's FLOPs at the best GEMM rate measured here, and a warning row wherever a fused
    backend loses to the reference on this machine. The full table is in table.md."""
    best = best_fused(rows)
    fp32 = any(r.get("speedup_vs_reference-fp32") for r in best)  # a half-precision run
    lines = [
        "| op | config | estimator | best fused | ms | x reference"
        + (" | x fp32 reference" if fp32 else "")
        + " | x torch.compile (mode) | x official/seed | memory / reference | time / FLOPs at peak |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if fp32 else ""),
    ]
    for r in best:
        materialising = r.get("speedup_vs_official", r.get("speedup_vs_seed"))
        compiled = r.get("speedup_vs_best_compiled")
        mode = {"compiled": "default", "compiled-max": "max-autotune"}.get(r.get("best_compiled"), "")
        lines.append(
            f"| {r['op']} | {r['config']} | {r['estimator']} | {r['peer']} | {r['median_ms']:.2f}"
            f" | {_fmt(r.get('speedup_vs_reference'), '.2f')}"
            + (f" | {_fmt(r.get('speedup_vs_reference-fp32'), '.2f')}" if fp32 else "")
            + f" | {_fmt(compiled, '.2f')}{f' ({mode})' if mode else ''}"
            f" | {_fmt(materialising, '.2f')} | {_fmt(r.get('memory_vs_reference'), '.2f')}"
            f" | {_fmt(r.get('floor_ratio'), '.2f')} |"
        )
    slower = [
        r
        for r in rows
        if r["peer"] in cases.FUSED and r["status"] == "ok" and (r.get("speedup_vs_reference") or 1.0) < 1.0
    ]
    for r in slower:
        lines.append(
            f"| WARNING: {r['op']} | {r['config']} | {r['estimator']} | {r['peer']}, {r['mode']} | {r['median_ms']:.2f}"
            f" | {r['speedup_vs_reference']:.2f}: slower than the reference on this machine | | | | |"
        )
    return "\n".join(lines)


PLOTTED_PEERS = {"reference": "reference", "compiled": "torch.compile", "official": "official", "seed": "seed"}


def speedup_plot(rows: list[dict], out: Path) -> Path | None:
    """speedup.png: per op, one group of bars per setting (config / estimator), the best
    fused backend's forward+backward speed-up over each peer; 1 = as fast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_fused(rows)
    ops = sorted({r["op"] for r in best})
    if not ops:
        return None
    fig, axes = plt.subplots(len(ops), 1, figsize=(10, 3.2 * len(ops)), squeeze=False)
    for axis, op in zip(axes[:, 0], ops, strict=True):
        mine = [r for r in best if r["op"] == op]
        peers = [p for p in PLOTTED_PEERS if any(r.get(f"speedup_vs_{p}") for r in mine)]
        width = min(0.25, 0.8 / max(1, len(peers)))
        for i, peer in enumerate(peers):
            xs = [k + (i - (len(peers) - 1) / 2) * width for k in range(len(mine))]
            heights = [r.get(f"speedup_vs_{peer}") or 0.0 for r in mine]
            bars = axis.bar(xs, heights, width, label=f"vs {PLOTTED_PEERS[peer]}")
            axis.bar_label(bars, [f"{h:.1f}" if h else "" for h in heights], fontsize=7)
        axis.set_xticks(range(len(mine)), [f"{r['config']} / {r['estimator']}\n({r['peer']})" for r in mine])
        axis.set_xlim(-0.6, len(mine) - 0.4)
        axis.axhline(1.0, color="gray", linewidth=0.8)
        axis.set_ylabel("speed-up (x)")
        axis.set_title(f"{op}: best fused backend, forward+backward")
        axis.legend(fontsize=8)
    fig.tight_layout()
    path = out / "speedup.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cpu_model() -> str:
    """The processor's model name (what lscpu prints), with the instruction sets that decide
    the GEMM providers' speed."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    sets = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model} ({', '.join(sets)})" if model else platform.machine()


def metadata(device: torch.device, dtype: torch.dtype, command: str, ceilings: dict) -> dict:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_gemm": torch.ops.dim_fused.cpu_gemm() if hasattr(torch.ops.dim_fused, "cpu_gemm") else None,
        "cpu_gemm_choices": (
            list(torch.ops.dim_fused.cpu_gemm_choices()) if hasattr(torch.ops.dim_fused, "cpu_gemm_choices") else []
        ),
        # (bytes of freed buffers the fused CPU plans hold for reuse at the end, the most they keep)
        "cpu_cache": list(torch.ops.dim_fused.cpu_cache_bytes())
        if hasattr(torch.ops.dim_fused, "cpu_cache_bytes")
        else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dim_fused": dim_fused.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "ceilings": ceilings,
    }


def write(rows: list[dict], meta: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    ceilings = ", ".join(f"{k} = {v:.1f}" for k, v in meta["ceilings"].items())
    precision = meta.get("fp32_precision")
    dtype = meta["dtype"] + (f" ({precision} matmuls and convolutions)" if precision else "")
    header = f"{meta['date']}, {meta['device']}, torch {meta['torch']}, {dtype}; measured ceilings: {ceilings}"
    (out / "table.md").write_text(f"Command: `{meta['command']}`\n\n{header}\n\n{markdown(rows)}\n")
    choices = "".join(f"\n- {line}" for line in meta.get("cpu_gemm_choices", []))
    if choices:
        choices = (
            "\nThe CPU plans' GEMM provider per shape class of fp32 products and of bf16 products"
            f" with fp32 results (DIM_FUSED_CPU_GEMM=auto, measured):{choices}\n"
        )
    cache = meta.get("cpu_cache")
    if cache and cache[0]:
        choices += (
            f"\nThe fused CPU plans held {cache[0] / 2**20:.0f} MiB of freed buffers for reuse at the end "
            f"(DIM_FUSED_CPU_CACHE_BYTES: at most {cache[1] / 2**20:.0f} MiB; not in the peak-memory columns, "
            "which count a reused buffer as a new one).\n"
        )
    (out / "summary.md").write_text(f"Command: `{meta['command']}`\n\n{header}\n\n{summary(rows)}\n{choices}")
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return [out / "summary.md", out / "table.md", out / "results.json", out / "results.csv", *plots(rows, out)]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="the DIM CIFAR-10 settings only (a CPU run takes under 2 minutes)"
    )
    size.add_argument("--tiny", action="store_true", help="toy sizes, seconds end to end (what the tests run)")
    parser.add_argument("--ops", nargs="+", choices=sorted(cases.PEERS), help="only these ops")
    parser.add_argument("--skip", nargs="+", default=[], metavar="CONFIG", help="leave out the configs of these names")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for tables, raw numbers, plots (default: runs/report-SIZE)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    parser.add_argument(
        "--fp32-precision",
        default="ieee",
        choices=cases.FP32_PRECISIONS,
        help="float32 matmuls and convolutions of every peer in IEEE fp32 or TF32 (default ieee)",
    )
    parser.add_argument("--peers", nargs="+", help="only these peers (e.g. leave out 'compiled')")
    parser.add_argument("--configs", nargs="+", metavar="CONFIG", help="only the configs of these names")
    parser.add_argument("--modes", nargs="+", choices=cases.MODES, default=list(cases.MODES), help="passes to time")
    parser.add_argument(
        "--min-time", type=float, default=0.2, help="seconds of interleaved rounds per peer and case, at least"
    )
    parser.add_argument(
        "--no-launches",
        action="store_true",
        help="leave out the table of device launches, host syncs and time per call on tiny inputs "
        "(benchmarks/launches.py; launches.md)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="time every peer's step captured as a CUDA graph and replayed (GPU only; no torch.compile peers)",
    )
    parser.add_argument(
        "--cpu-memory-gb", type=float, default=12.0, help="on the CPU, allocations beyond this count as out of memory"
    )
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cpu":
        memory.limit_cpu_memory(args.cpu_memory_gb)
    config_list = configs.TINY if args.tiny else configs.QUICK if args.quick else configs.FULL
    if args.configs:  # by name, from every setting (a name may stand for several ops: --ops narrows)
        config_list = [c for c in configs.FULL + configs.TINY if c.name in args.configs]
    if args.ops:
        config_list = [c for c in config_list if c.op in args.ops]
    config_list = [c for c in config_list if c.name not in args.skip]
    command = "python -m benchmarks.report " + shlex.join(argv if argv is not None else sys.argv[1:])
    ceilings = measure_ceilings(device, dtype)
    rows: list[dict] = []
    # A time limit (timeout's SIGTERM) or Ctrl-C ends the run but keeps the finished cases.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with cases.fp32_precision(args.fp32_precision):
            run(
                config_list,
                device,
                dtype,
                ceilings,
                rows=rows,
                peers=args.peers,
                modes=args.modes,
                min_time_s=args.min_time,
                graphs=args.cuda_graphs,
            )
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    meta = {**metadata(device, dtype, command, ceilings), "interrupted": interrupted}
    meta["cuda_graphs"] = args.cuda_graphs
    if dtype == torch.float32:
        meta["fp32_precision"] = args.fp32_precision
    if interrupted:
        print(f"interrupted: reporting the {len(rows)} rows finished so far", file=sys.stderr)
    out = args.out or Path("runs") / f"report-{'tiny' if args.tiny else 'quick' if args.quick else 'full'}"
    print(
        f"dim_fused benchmark report: {meta['device']}, torch {meta['torch']}, {meta['dtype']} "
        f"{meta.get('fp32_precision', '')}, {meta['date']}{', CUDA graphs' if args.cuda_graphs else ''}"
    )
    print("measured ceilings: " + ", ".join(f"{k} = {v:.1f}" for k, v in ceilings.items()))
    print(summary(rows))
    write(rows, meta, out)
    if not (interrupted or args.no_launches):
        # What a call costs beyond its arithmetic: launches and the host's time per call at tiny sizes.
        table = launches.markdown(launches.table(device=device))
        (out / "launches.md").write_text(f"Command: `{command}`\n\n{meta['device']}, float32, tiny inputs\n\n{table}")
        print(table)
    print(f"every row (all peers, both modes, throughputs) in {out / 'table.md'}; plots and raw numbers in {out}/")
    return rows


if __name__ == "__main__":
    main()

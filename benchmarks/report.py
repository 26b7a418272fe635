"""Run the benchmark configs, check every fused result against the reference,
time it side by side with its peers, and print a markdown table.

    python -m benchmarks.report [--quick] [--out DIR] [--dtype float32]
"""

import argparse
import datetime
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

import dim_fused
from dim_fused import reference

from . import cases, configs
from .timing import measure


def check_against_reference(peer: str, pos: torch.Tensor, neg: torch.Tensor, estimator: str) -> None:
    """Refuse to time a kernel whose value or gradients disagree with the float64 oracle."""
    exact = [x.detach().double().requires_grad_() for x in (pos, neg)]
    oracle = reference.mi_bound(*exact, estimator)
    oracle_grads = torch.autograd.grad(oracle, exact)
    leaves = [x.detach().requires_grad_() for x in (pos, neg)]
    out = cases.mi_bound_fn(peer)(*leaves, estimator)
    grads = torch.autograd.grad(out, leaves)
    tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[pos.dtype]
    for what, got, want in [("value", out, oracle), *zip(("d pos", "d neg"), grads, oracle_grads, strict=True)]:
        scale = want.abs().max().item() + 1e-30
        error = (got.double() - want).abs().max().item()
        if not error <= tol * max(1.0, scale):
            raise AssertionError(
                f"{peer} {estimator}: {what} is off by {error:.3g} (tolerance {tol * max(1.0, scale):.3g})"
            )


def run(quick: bool, device: torch.device, dtype: torch.dtype) -> list[dict]:
    config_list = configs.MI_BOUND_QUICK if quick else configs.MI_BOUND
    jobs = [
        (config, estimator, mode)
        for config in config_list
        for estimator in configs.MI_BOUND_ESTIMATORS
        for mode in cases.MODES
    ]
    rows = []
    for config, estimator, mode in tqdm(jobs, desc="mi_bound", unit="case", file=sys.stderr):
        pos, neg = cases.mi_bound_inputs(config, device, dtype)
        timings = {}
        for peer in cases.PEERS:
            row = {"op": "mi_bound", "config": config.name, "estimator": estimator, "mode": mode, "peer": peer}
            reason = cases.unavailable(peer, device)
            if reason is None and peer in cases.FUSED:
                check_against_reference(peer, pos, neg, estimator)
            if reason is not None:
                rows.append({**row, "skipped": reason})
                continue
            timing = measure(cases.step(cases.mi_bound_fn(peer), (pos, neg), mode, estimator), device)
            timings[peer] = timing.median_ms
            nbytes = cases.mi_bound_bytes(config, pos.element_size(), mode)
            rows.append({**row, **asdict(timing), "bytes": nbytes, "gb_per_s": nbytes / timing.median_ms / 1e6})
        for row in rows[-len(cases.PEERS) :]:
            if "median_ms" in row:
                row["vs_reference"] = timings["reference"] / row["median_ms"]
                row["vs_compiled"] = timings["compiled"] / row["median_ms"]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| op | config | estimator | mode | peer | median ms | IQR ms | x vs reference | x vs compiled | GB/s |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['op']} | {r['config']} | {r['estimator']} | {r['mode']} | {r['peer']} |"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped'][:60]} | | | | |")
        else:
            lines.append(
                f"{head} {r['median_ms']:.4f} | {r['q3_ms'] - r['q1_ms']:.4f} | {r['vs_reference']:.2f} | "
                f"{r['vs_compiled']:.2f} | {r['gb_per_s']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="the small configs only (a CPU run takes well under 2 minutes)"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for table.md and results.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = run(args.quick, device, dtype)
    table = markdown(rows)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.report " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dim_fused": dim_fused.__version__,
        "dtype": args.dtype,
    }
    print(f"dim_fused benchmark report: {meta['device']}, torch {meta['torch']}, {args.dtype}, {meta['date']}")
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(f"Command: `{meta['command']}`\n\n{table}\n")
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

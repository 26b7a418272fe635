"""Training steps per second of the DIM trainer, reference vs fused backends, side by side
in one process on the same data: ``python -m benchmarks.train_speed [--out FOLDER]``.

For each critic and CUDA-graph mode, every backend's trainer is built (same seed, same
batches) and warmed up (under CUDA graphs the warm-up includes the capture), then their
whole optimizer steps (encoder + critics + prior discriminator) are timed interleaved, as
the report times its peers (``timing.measure_interleaved``: one step of each in turn, the
order rotating), so that a shared machine's drift falls on every backend alike. On a GPU
every case runs with the step replayed as a CUDA graph (the trainer's default there) and
eagerly, and each is compared with the reference backend in the same mode. Default data:
random CIFAR-sized images (``synthetic``).
"""

import argparse
import dataclasses
import datetime
import functools
import json
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import dim_fused
from dim_fused.training import DIMConfig, TrainConfig, Trainer

from .cases import FP32_PRECISIONS, fp32_precision
from .timing import Timing, measure_interleaved


def warm_step(trainer: Trainer, warmup: int) -> Callable[[], object]:
    """A function running one optimizer step of `trainer` on its next batch, after
    ``warmup`` steps run here."""
    batches = trainer.batches()
    for _ in range(warmup):
        trainer.train_step(next(batches))
    return lambda: trainer.train_step(next(batches))


def time_steps(trainers: dict[str, Trainer], warmup: int, min_time_s: float) -> dict[str, Timing]:
    """One optimizer step of each trainer timed the report's way: warmed up, then
    interleaved (median and quartiles of repeats, CUDA events on a GPU)."""
    steps = {name: warm_step(trainer, warmup) for name, trainer in trainers.items()}
    device = next(iter(trainers.values())).device
    return measure_interleaved(steps, device, min_time_s=min_time_s)


def built_with_peak(build: Callable[[], Trainer], device: torch.device) -> tuple[Trainer, float | None]:
    """The trainer `build` makes and, on a GPU, the peak memory of its building and first
    step (a graph's capture comes later) above what was allocated before: the other
    backends' trainers, alive for the interleaved timing, are not counted. None on a CPU."""
    if device.type != "cuda":
        return build(), None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    trainer = build()
    trainer.train_step(next(trainer.batches()))
    torch.cuda.synchronize(device)
    return trainer, (torch.cuda.max_memory_allocated(device) - before) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--critics", nargs="+", default=["concat", "dot"])
    parser.add_argument("--backends", nargs="+", help="default: reference and the fused ones available")
    parser.add_argument("--preset", default="dim-local")
    parser.add_argument("--estimator", default="infonce", help="default: the paper's headline DIM(L) bound")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bfloat16 autocast (default: on CUDA)")
    parser.add_argument("--units", type=int, default=2048, help="the encode-and-dot critic's width")
    parser.add_argument(
        "--cuda-graphs",
        choices=["both", "on", "off"],
        help="time steps replayed as CUDA graphs, eager ones, or both (default: both on a GPU, off on a CPU)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (a graph's capture is the 4th)")
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds of timed steps per case, at least")
    parser.add_argument(
        "--fp32-precision",
        default="ieee",
        choices=FP32_PRECISIONS,
        help="float32 matmuls and convolutions of every backend in IEEE fp32 or TF32 (default ieee)",
    )
    parser.add_argument("--out", help="write table.md and results.json here")
    args = parser.parse_args(argv)
    with fp32_precision(args.fp32_precision):
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    device = torch.device(args.device)
    backends = args.backends or ["reference", *(b for b in dim_fused.available_backends(device) if b != "reference")]
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]  # the interpreter is not a speed path
    amp = device.type == "cuda" if args.amp is None else args.amp
    graphs = args.cuda_graphs or ("both" if device.type == "cuda" else "off")
    modes = {"both": [True, False], "on": [True], "off": [False]}[graphs]
    if any(modes) and device.type != "cuda":
        raise SystemExit(f"--cuda-graphs {graphs}: CUDA graphs need a CUDA device, not {device}")
    rows = []
    for critic in args.critics:
        for graphed in modes:
            trainers, peaks = {}, {}
            for backend in backends:
                model = DIMConfig.preset(
                    args.preset, critic=critic, backend=backend, estimator=args.estimator, units=args.units
                )
                config = TrainConfig(model=model, data=args.data, batch_size=args.batch_size, amp=amp)
                trainers[backend], peaks[backend] = built_with_peak(
                    functools.partial(Trainer, config, "unused", device=str(device), cuda_graphs=graphed), device
                )
            timings = time_steps(trainers, args.warmup, args.min_time)
            for backend, timing in timings.items():
                rows.append(
                    {
                        "critic": critic,
                        "backend": backend,
                        "cuda_graphs": graphed,
                        "steps_per_s": 1e3 / timing.median_ms,
                        "step_ms": dataclasses.asdict(timing),
                        "peak_mib": peaks[backend],
                    }
                )
                mode = "graphed" if graphed else "eager"
                print(f"{critic:>6} {backend:>9} {mode:>7}: {1e3 / timing.median_ms:7.2f} steps/s", file=sys.stderr)
            del trainers

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.processor() or platform.machine()}"
    )
    command = "python -m benchmarks.train_speed " + shlex.join(argv if argv is not None else sys.argv[1:])
    header = (
        f"DIM training steps/s, {args.preset} {args.estimator}, batch {args.batch_size}, data {args.data}, "
        f"amp {amp}, float32 {args.fp32_precision}, on {name}, torch {torch.__version__}, {datetime.date.today()}"
        f"\n\n`{command}`\n"
    )
    lines = [
        header,
        "| critic | backend | CUDA graphs | steps/s (median) | step ms (IQR) | x vs reference | peak GPU MiB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = [
            r
            for r in rows
            if (r["critic"], r["cuda_graphs"], r["backend"]) == (row["critic"], row["cuda_graphs"], "reference")
        ]
        ratio = f"{row['steps_per_s'] / base[0]['steps_per_s']:.2f}" if base else ""
        peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        ms = row["step_ms"]
        spread = f"{ms['median_ms']:.0f} ({ms['q1_ms']:.0f}-{ms['q3_ms']:.0f})"
        cells = [row["critic"], row["backend"], "on" if row["cuda_graphs"] else "off", f"{row['steps_per_s']:.2f}"]
        lines.append("| " + " | ".join([*cells, spread, ratio, peak]) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table)
        meta = {"command": command, "device": name, "torch": torch.__version__, "date": str(datetime.date.today())}
        meta["fp32_precision"] = args.fp32_precision
        (out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training steps per second of the DIM trainer, reference vs fused backends, side by side
in one process on the same data: ``python -m benchmarks.train_speed [--out FOLDER]``.

Each (critic, backend) case builds the trainer (same seed, same batches), runs warm-up
steps, then times whole optimizer steps (encoder + critics + prior discriminator),
synchronising the GPU. Default data: random CIFAR-sized images (``synthetic``).
"""

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

import dim_fused
from dim_fused.models import DIMConfig
from dim_fused.train import TrainConfig, Trainer


def time_steps(trainer: Trainer, warmup: int, steps: int, repeats: int) -> list[float]:
    """Steps per second of ``repeats`` timed windows of ``steps`` steps each."""
    batches = trainer.batches()
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        trainer.train_step(next(batches))
    rates = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(next(batches))
        sync()
        rates.append(steps / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--critics", nargs="+", default=["concat", "dot"])
    parser.add_argument("--backends", nargs="+", help="default: reference and the fused ones available")
    parser.add_argument("--preset", default="dim-local")
    parser.add_argument("--estimator", default="jsd")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bfloat16 autocast (default: on CUDA)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per case (the median is reported)")
    parser.add_argument("--out", help="write table.md and results.json here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    backends = args.backends or ["reference", *(b for b in dim_fused.available_backends(device) if b != "reference")]
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]  # the interpreter is not a speed path
    amp = device.type == "cuda" if args.amp is None else args.amp
    rows = []
    for critic in args.critics:
        for backend in backends:
            model = DIMConfig.preset(args.preset, critic=critic, backend=backend, estimator=args.estimator)
            config = TrainConfig(model=model, data=args.data, batch_size=args.batch_size, amp=amp)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            trainer = Trainer(config, "unused", device=str(device))
            rates = time_steps(trainer, args.warmup, args.steps, args.repeats)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            rows.append(
                {
                    "critic": critic,
                    "backend": backend,
                    "steps_per_s": statistics.median(rates),
                    "runs": rates,
                    "peak_mib": peak,
                }
            )
            print(f"{critic:>6} {backend:>9}: {statistics.median(rates):7.2f} steps/s", file=sys.stderr)
            del trainer

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.processor() or platform.machine()}"
    )
    command = "python -m benchmarks.train_speed " + shlex.join(argv if argv is not None else sys.argv[1:])
    header = (
        f"DIM training steps/s, {args.preset} {args.estimator}, batch {args.batch_size}, data {args.data}, "
        f"amp {amp}, on {name}, torch {torch.__version__}, {datetime.date.today()}\n\n`{command}`\n"
    )
    lines = [
        header,
        "| critic | backend | steps/s (median) | x vs reference | peak GPU MiB |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        base = [r for r in rows if r["critic"] == row["critic"] and r["backend"] == "reference"]
        ratio = f"{row['steps_per_s'] / base[0]['steps_per_s']:.2f}" if base else ""
        peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        lines.append(f"| {row['critic']} | {row['backend']} | {row['steps_per_s']:.2f} | {ratio} | {peak} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table)
        meta = {"command": command, "device": name, "torch": torch.__version__, "date": str(datetime.date.today())}
        (out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

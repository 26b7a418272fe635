"""Train Deep InfoMax: ``python -m dim_fused.training.train`` (``--help`` lists the options).

Writes into ``--out``: ``metrics.jsonl`` (one JSON object per logged step, then the
probe results), ``curves.png``, ``checkpoint.pt`` (written to a temporary file, then
renamed: a crash never leaves a broken or missing checkpoint) and ``probe.json``.
``--resume`` continues from ``checkpoint.pt`` exactly where it stopped.

Several processes: ``torchrun --nproc_per_node N -m dim_fused.training.train ...`` (gloo
on CPU, NCCL on GPUs). Each process takes ``--batch-size`` images of every global batch;
the encoder and critics are wrapped in DistributedDataParallel, BatchNorm statistics
span all ranks, and the encode-and-dot critic takes its negatives from every rank.
"""

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from . import data as datasets
from .checkpoint import write_text_atomically
from .config import CRITICS, ENCODERS, PRESETS, DIMConfig, TrainConfig
from .evaluate import evaluate, print_table
from .plots import plot
from .trainer import CHECKPOINT, METRICS, Trainer, read_metrics


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):  # flags, and options whose help says their default
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dim_fused.training.train",
        description="Train Deep InfoMax with the fused MI ops; evaluate it with a linear probe.",
        formatter_class=_HelpWithDefaults,
    )
    parser.add_argument("--data", default="digits", help=f"one of {', '.join(datasets.DATASETS)}")
    parser.add_argument("--data-dir", default="data", help="folder holding cifar10/cifar100/stl10 (never downloaded)")
    parser.add_argument("--out", default="runs/dim", help="folder for metrics, plot, checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    parser.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a run")
    parser.add_argument("--preset", default="dim-local", help=f"(alpha, beta, gamma): {PRESETS}")
    parser.add_argument("--alpha", type=float, help="global MI weight (default: the preset's)")
    parser.add_argument("--beta", type=float, help="local MI weight (default: the preset's)")
    parser.add_argument("--gamma", type=float, help="prior matching weight (default: the preset's)")
    parser.add_argument("--estimator", default="jsd", help="MI bound: jsd, infonce, dv, or another f-measure")
    parser.add_argument("--critic", default="concat", choices=CRITICS, help="concat-and-conv or encode-and-dot")
    parser.add_argument("--negatives", type=int, default=1, help="shuffled negatives per positive (concat critic)")
    parser.add_argument("--backend", default="auto", help="auto, reference, cpu, cuda or triton")
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512], help="concat critic hidden units")
    parser.add_argument("--units", type=int, default=2048, help="encode-and-dot critic code width")
    parser.add_argument(
        "--architecture", choices=tuple(ENCODERS), help="(default: alex64x64 for stl10, else basic32x32)"
    )
    parser.add_argument(
        "--steps", type=int, help="optimizer steps in all (default: 1500; on --resume, the saved number)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per process and step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--prior-lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="bfloat16 autocast (default: on CUDA; on a CPU it runs, slowly)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: this rank's GPU, else cpu)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--probe-samples", type=int, default=10000, help="most training images the probe fits on")
    parser.add_argument("--no-eval", action="store_true", help="skip the linear probe at the end")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {args.preset!r}")
    alpha, beta, gamma = PRESETS[args.preset]
    channels = 1 if args.data == "digits" else 3
    architecture = args.architecture or ("alex64x64" if args.data == "stl10" else "basic32x32")
    model = DIMConfig(
        alpha=alpha if args.alpha is None else args.alpha,
        beta=beta if args.beta is None else args.beta,
        gamma=gamma if args.gamma is None else args.gamma,
        estimator=args.estimator,
        critic=args.critic,
        num_negatives=args.negatives,
        backend=args.backend,
        architecture=architecture,
        in_channels=channels,
        hidden=tuple(args.hidden),
        units=args.units,
    )
    amp = torch.cuda.is_available() and (args.device is None or args.device.startswith("cuda"))
    return TrainConfig(
        model=model,
        data=args.data,
        data_dir=args.data_dir,
        steps=1500 if args.steps is None else args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        prior_lr=args.prior_lr,
        seed=args.seed,
        amp=amp if args.amp is None else args.amp,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        probe_samples=args.probe_samples,
    )


def _init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    checkpoint = out / CHECKPOINT
    try:
        if checkpoint.exists() and not (args.resume or args.overwrite):
            raise ValueError(f"{out} already holds a run: pass --resume to continue it or --overwrite to start afresh")
        state = (
            torch.load(checkpoint, map_location="cpu", weights_only=False)
            if args.resume and checkpoint.exists()
            else None
        )
        if state is not None:
            config = TrainConfig(**{**state["config"], **({"steps": args.steps} if args.steps else {})})
        else:
            config = config_from_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _init_distributed()
    try:
        trainer = Trainer(config, out, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if trainer.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(f".{CHECKPOINT}.*.tmp"):  # a save cut short by a kill: never a valid file
            stale.unlink()
        records = read_metrics(out / METRICS)
        kept = [r for r in records if r.get("step", math.inf) <= (state["step"] if state else 0)]
        write_text_atomically("".join(json.dumps(r) + "\n" for r in kept), out / METRICS)
    if state is not None:
        trainer.load(state)
        if trainer.rank == 0:
            print(f"resumed from {checkpoint} at step {trainer.step}", file=sys.stderr)
    if dist.is_initialized():
        dist.barrier()

    def stop(signum, frame):  # SIGTERM (a scheduler's preemption) or Ctrl-C: checkpoint, then leave
        if trainer.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now (the last checkpoint stays valid)
        trainer.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not trainer.run(progress=not args.no_progress):
        print(f"stopped; {checkpoint} holds step {trainer.step}: continue with --resume", file=sys.stderr)
        return 130
    if trainer.rank == 0:
        probe = None
        if not args.no_eval:
            probe = evaluate(trainer.config, trainer.model.state_dict(), trainer.data, trainer.device)
            print_table(probe)
            write_text_atomically(json.dumps(probe, indent=2) + "\n", out / "probe.json")
            with open(out / METRICS, "a") as f:
                f.write(json.dumps({"probe": probe}) + "\n")
        plot(read_metrics(out / METRICS), probe, out / "curves.png")
        print(f"wrote {out / METRICS}, {out / 'curves.png'}, {checkpoint}", file=sys.stderr)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

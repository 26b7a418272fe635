"""Train Deep InfoMax: ``python -m dim_fused.training.train`` (``--help`` lists the options).

Writes into ``--out``: ``metrics.jsonl`` (one JSON object per logged step, then the
probe results), ``curves.png``, ``checkpoint.pt`` (written to a temporary file, then
renamed: a crash never leaves a broken or missing checkpoint) and ``probe.json``.
``--resume`` continues from ``checkpoint.pt`` exactly where it stopped.

Exit status: 0 done; 2 a bad option, dataset or checkpoint, a run folder in use by
another run, or a loss or weights that became NaN or inf (the last finite checkpoint is
kept); 3 the run folder cannot be written (read-only, disk full; the last checkpoint
stays intact); 130 stopped by SIGTERM or Ctrl-C (during training after checkpointing the
step in flight, during the probes at once: the finished run is checkpointed).

Several processes: ``torchrun --nproc_per_node N -m dim_fused.training.train ...`` (gloo
on CPU, NCCL on GPUs). Each process takes ``--batch-size`` images of every global batch;
the encoder and critics are wrapped in DistributedDataParallel, BatchNorm statistics
span all ranks, and the encode-and-dot critic takes its negatives from every rank.
After training, every rank leaves the process group together (a barrier, then
``destroy_process_group``); rank 0 then probes and plots alone. Such a process ends with
``os._exit`` once its output is flushed (see ``_run_as_script``).
"""

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from . import data as datasets
from .checkpoint import (
    CheckpointError,
    RunFolderBusy,
    RunLock,
    UnsafePath,
    append_text,
    load_checkpoint,
    remove,
    write_text_atomically,
)
from .config import CRITICS, ENCODERS, GLOBAL_CRITICS, PRESETS, DIMConfig, TrainConfig
from .evaluate import check_probe_samples, evaluate, print_table
from .plots import plot, plot_probes
from .trainer import CHECKPOINT, METRICS, Diverged, Trainer, read_metrics

# What a run writes into its folder besides the metrics: an --overwrite removes them first.
RUN_FILES = (CHECKPOINT, "probe.json", "curves.png", "probes.png")

# Every option that defines the run: its default, and where it lives in the TrainConfig
# ("model." for DIMConfig). Options a user leaves out are absent from the parsed arguments,
# so --resume can tell what was asked for from what was merely defaulted.
DEFAULTS: dict[str, Any] = {
    "data": "digits",
    "data_dir": "data",
    "preset": "dim-local",
    "estimator": "infonce",
    "critic": "dot",
    "global_critic": "official",
    "negatives": 1,
    "backend": "auto",
    "hidden": [512, 512],
    "units": 2048,
    "views": 1,
    "augment": "crop",
    "steps": 1500,
    "batch_size": 64,
    "lr": 1e-4,
    "prior_lr": 1e-4,
    "seed": 0,
    "log_every": 10,
    "checkpoint_every": 250,
    "probe_samples": 60000,
}
FIELDS: dict[str, str] = {
    "data": "data",
    "data_dir": "data_dir",
    "alpha": "model.alpha",
    "beta": "model.beta",
    "gamma": "model.gamma",
    "estimator": "model.estimator",
    "critic": "model.critic",
    "global_critic": "model.global_critic",
    "negatives": "model.num_negatives",
    "backend": "model.backend",
    "hidden": "model.hidden",
    "units": "model.units",
    "views": "model.views",
    "augment": "augment",
    "architecture": "model.architecture",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "prior_lr": "prior_lr",
    "seed": "seed",
    "amp": "amp",
    "log_every": "log_every",
    "checkpoint_every": "checkpoint_every",
    "probe_samples": "probe_samples",
}
# What a resumed run may change: the rest would make it a different run.
CHANGEABLE_ON_RESUME = (
    "data_dir",
    "backend",
    "steps",
    "lr",
    "prior_lr",
    "log_every",
    "checkpoint_every",
    "probe_samples",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dim_fused.training.train",
        description="Train Deep InfoMax with the fused MI ops; probe its features (linear, nonlinear, few labels).",
        epilog="Exit status: 0 done, 2 bad option/data/checkpoint, folder in use or a NaN/inf loss (the last finite "
        "checkpoint is kept), 3 folder not writable, 130 stopped (checkpointed).",
    )

    def option(name: str, help: str, **kwargs) -> None:
        key = name.removeprefix("--").replace("-", "_")
        if key in DEFAULTS:
            help = f"{help} (default: {DEFAULTS[key]})"
        parser.add_argument(name, help=help, default=argparse.SUPPRESS, **kwargs)

    option("--data", f"one of {', '.join(datasets.DATASETS)}")
    option(
        "--data-dir",
        "folder holding cifar10/cifar100/stl10, fashion-mnist (FashionMNIST/raw/; else Debian's "
        "dataset-fashion-mnist package), or the 'folder' dataset's train/, test/ and unlabeled/ "
        "(downloaded only with --download)",
    )
    parser.add_argument("--out", default="runs/dim", help="folder for metrics, plot, checkpoint (default: runs/dim)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    parser.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a run")
    option("--preset", f"(alpha, beta, gamma): {PRESETS}")
    option("--alpha", "global MI weight (default: the preset's)", type=float)
    option("--beta", "local MI weight (default: the preset's)", type=float)
    option("--gamma", "prior matching weight (default: the preset's)", type=float)
    option("--estimator", "MI bound: jsd, infonce, dv, or another f-measure")
    option("--critic", "the local MI critic: encode-and-dot (official) or concat-and-conv", choices=CRITICS)
    option(
        "--global-critic", "official: GlobalDIM's convnet + dot; flat: the map as one location", choices=GLOBAL_CRITICS
    )
    option("--negatives", "shuffled negatives per positive (concat critic)", type=int)
    option("--backend", "auto, reference, cpu, cuda or triton")
    option("--hidden", "concat critic hidden units", type=int, nargs="+")
    option("--units", "encode-and-dot critic code width", type=int)
    option(
        "--views",
        "1: each global code against its own image's local features (the paper's); 2: against another "
        "random crop/flip's (cross-view, label-efficient; twice the encoder's work per step)",
        type=int,
        choices=(1, 2),
    )
    option(
        "--augment",
        "training views: crop (a random crop and flip) or strong (also a random zoom, contrast and "
        "brightness: a more label-efficient global code on Fashion-MNIST)",
        choices=datasets.AUGMENTATIONS,
    )
    option("--architecture", "(default: alex64x64 for stl10, else basic32x32)", choices=tuple(ENCODERS))
    option("--steps", "optimizer steps in all; on --resume, more than the checkpoint's", type=int)
    parser.add_argument("--epochs", type=float, help="instead of --steps: passes over the training images")
    option("--batch-size", "images per process and step", type=int)
    option("--lr", "encoder and critics' learning rate", type=float)
    option("--prior-lr", "prior discriminator's learning rate", type=float)
    option("--seed", "weights, batch order, negatives", type=int)
    option(
        "--amp",
        "bfloat16 autocast (default: off; not yet shown on a GPU to match float32)",
        action=argparse.BooleanOptionalAction,
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: this rank's GPU, else cpu)")
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        help="replay each training step as one CUDA graph (default: on a CUDA GPU in one process; "
        "--no-cuda-graphs to run it eagerly)",
    )
    option("--log-every", "steps per metrics record", type=int)
    option("--checkpoint-every", "steps per checkpoint", type=int)
    option("--probe-samples", "most training images the probes fit on (Fashion-MNIST has 60000, CIFAR 50000)", type=int)
    parser.add_argument(
        "--download",
        action="store_true",
        help="let torchvision fetch cifar10/cifar100/stl10/fashion-mnist into --data-dir",
    )
    parser.add_argument(
        "--classifier-epochs",
        type=int,
        help="the nonlinear probe's epochs (0: none; default: the paper's 100 on a GPU, 30 on a CPU)",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the probes at the end")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--time-budget",
        type=_seconds,
        help="end training (checkpointed, then the probes) at the first logging step past this much time: "
        "seconds, or with a unit (90s, 30m, 1.5h)",
    )
    return parser.parse_args(argv)


def _seconds(text: str) -> float:
    """A duration: seconds, or a number with s, m or h."""
    units = {"s": 1, "m": 60, "h": 3600}
    scale = units.get(text[-1:].lower(), 1)
    number = text[:-1] if text[-1:].lower() in units else text
    try:
        seconds = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 600, 90s, 30m, 1.5h)") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive duration")
    return seconds


def given(args: argparse.Namespace, saved: TrainConfig | None = None) -> dict[str, Any]:
    """The run-defining options the user set on the command line; --epochs becomes
    --steps (an epoch: every training image once, over all processes), counted with the
    ``saved`` run's dataset and batch on --resume (the defaults' would give another size)."""
    asked = {k: v for k, v in vars(args).items() if k in FIELDS or k == "preset"}
    if args.epochs is not None:
        if "steps" in asked:
            raise ValueError("--steps and --epochs both say how long to train: give one")
        if not (math.isfinite(args.epochs) and args.epochs > 0):
            raise ValueError(f"--epochs {args.epochs}: give a positive, finite number of passes over the images")
        data = saved.data if saved else asked.get("data", DEFAULTS["data"])
        data_dir = asked.get("data_dir", saved.data_dir if saved else DEFAULTS["data_dir"])
        batch = saved.batch_size if saved else asked.get("batch_size", DEFAULTS["batch_size"])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        images = datasets.training_images(data, data_dir)  # ValueError for a name it does not know
        per_epoch = images // max(1, batch * world)  # a bad batch size fails in TrainConfig
        asked["steps"] = max(1, math.ceil(args.epochs * per_epoch))
    return asked


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    options = {**DEFAULTS, **given(args)}
    if options["preset"] not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {options['preset']!r}")
    alpha, beta, gamma = PRESETS[options["preset"]]
    data = options["data"]
    if data not in datasets.DATASETS:
        raise ValueError(f"data must be one of {', '.join(datasets.DATASETS)}; got {data!r}")
    model = DIMConfig(
        alpha=options.get("alpha", alpha),
        beta=options.get("beta", beta),
        gamma=options.get("gamma", gamma),
        estimator=options["estimator"],
        critic=options["critic"],
        global_critic=options["global_critic"],
        num_negatives=options["negatives"],
        backend=options["backend"],
        architecture=options.get("architecture", "alex64x64" if data == "stl10" else "basic32x32"),
        in_channels=datasets.channels(data),
        hidden=tuple(options["hidden"]),
        units=options["units"],
        views=options["views"],
    )
    return TrainConfig(
        model=model,
        amp=options.get("amp", False),
        **{k: options[k] for k in ("data", "data_dir", "steps", "batch_size", "lr", "prior_lr", "seed", "augment")},
        **{k: options[k] for k in ("log_every", "checkpoint_every", "probe_samples")},
    )


def _field(config: TrainConfig, path: str) -> Any:
    obj = config
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def resumed_config(saved: TrainConfig, step: int, asked: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The saved run with what the user may change on resume applied (and said), or
    ValueError listing every option that contradicts the checkpoint."""
    asked = dict(asked)
    if "preset" in asked:
        for name, value in zip(("alpha", "beta", "gamma"), PRESETS.get(asked.pop("preset"), (None,) * 3), strict=True):
            asked.setdefault(name, value)
    if "hidden" in asked:
        asked["hidden"] = tuple(asked["hidden"])
    conflicts, changes = [], {}
    for name, value in asked.items():
        was = _field(saved, FIELDS[name])
        if value == was:
            continue
        if name in CHANGEABLE_ON_RESUME:
            changes[name] = (was, value)
        else:
            conflicts.append(f"--{name.replace('_', '-')} {value} (the checkpoint's run has {was})")
    if conflicts:
        raise ValueError(
            "--resume continues the saved run, which these options contradict: "
            + "; ".join(conflicts)
            + ". Leave them out, or start a new run in another --out (or --overwrite)"
        )
    if "steps" in changes and changes["steps"][1] < step:
        raise ValueError(f"--steps {changes['steps'][1]}: the checkpoint is already at step {step}")
    model_changes, run_changes = {}, {}
    for name, (_, new) in changes.items():
        path = FIELDS[name]
        if path.startswith("model."):
            model_changes[path.removeprefix("model.")] = new
        else:
            run_changes[path] = new
    config = dataclasses.replace(saved, model=dataclasses.replace(saved.model, **model_changes), **run_changes)
    notes = [f"--{name.replace('_', '-')} {new} (was {was})" for name, (was, new) in changes.items()]
    return config, notes


def _init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def _leave_process_group(device: torch.device) -> None:
    """Every rank, past its last collective, leaves the process group at the same point: a
    barrier (no rank tears down while another is still in a collective), then
    ``destroy_process_group`` on every rank (NCCL's may be collective). Rank 0 then probes
    and plots with no process group: nothing to time out however long the probes take, and
    nothing to wait for when a SIGTERM stops them."""
    if not dist.is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
    dist.destroy_process_group()


def _all_ranks_agree(ok: bool) -> bool:
    """Whether every rank is ok (one all-reduce; True without torch.distributed)."""
    if not dist.is_initialized():
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() == 0.0


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    checkpoint = out / CHECKPOINT
    try:
        if not args.out:  # Path("") is the current folder: a run would litter it
            raise ValueError("--out is empty: name the run's folder")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a folder")
        if args.classifier_epochs is not None and args.classifier_epochs < 0:
            raise ValueError(f"--classifier-epochs {args.classifier_epochs}: give 0 (no nonlinear probe) or more")
        if args.resume and args.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: continue the run, or start afresh")
        if checkpoint.exists() and not (args.resume or args.overwrite):
            raise ValueError(f"{out} already holds a run: pass --resume to continue it or --overwrite to start afresh")
        state = load_checkpoint(checkpoint) if args.resume and checkpoint.exists() else None
        if state is None:
            config = config_from_args(args)
        else:
            saved = TrainConfig(**state["config"])  # load_checkpoint validated it
            config, changes = resumed_config(saved, state["step"], given(args, saved))
            for change in changes:
                print(f"resuming with {change}", file=sys.stderr)
    except ValueError as error:  # CheckpointError included
        return _fail(str(error), 2)
    _init_distributed()
    rank = dist.get_rank() if dist.is_initialized() else 0
    if args.download and rank == 0:
        try:
            datasets.download(config.data, config.data_dir)
        except (RuntimeError, OSError, ValueError) as error:  # no network, a time-out, a failed checksum
            return _fail(f"--download {config.data} into {config.data_dir} failed: {error}", 2)
    if dist.is_initialized():
        dist.barrier()
    lock, lock_error = None, None
    if rank == 0:
        try:
            lock = RunLock(out)
        except (RunFolderBusy, UnsafePath) as error:
            lock_error = (str(error), 2)
        except OSError as error:
            lock_error = (f"cannot write to {out}: {error}", 3)
    if not _all_ranks_agree(lock_error is None):
        return _fail(*lock_error) if lock_error else 2
    try:
        trainer = Trainer(config, out, device=args.device, cuda_graphs=args.cuda_graphs)
        if not args.no_eval:  # the probes' sizes are known now: refused before training, not after
            check_probe_samples(trainer.data, config.probe_samples, config.seed)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        if lock is not None:
            lock.release()
        return _fail(str(error), 2)
    try:
        return _train_and_evaluate(trainer, state, args, out)
    except OSError as error:
        if error.errno is None:
            raise
        where = f"; {checkpoint} holds the last checkpoint, intact" if checkpoint.exists() else ""
        return _fail(f"cannot write to {out}: {error}{where}", 3)
    except (CheckpointError, UnsafePath) as error:
        return _fail(str(error), 2)
    except Diverged as error:
        where = f"{checkpoint} keeps the last finite checkpoint" if checkpoint.exists() else "nothing was checkpointed"
        return _fail(f"training diverged: {error}; {where}. Resume with a lower --lr, or start afresh", 2)
    except KeyboardInterrupt:  # a second Ctrl-C: left at once, in the middle of a step or a save
        where = f"{checkpoint} holds the last checkpoint: continue with --resume" if checkpoint.exists() else ""
        print(f"stopped at once (a second Ctrl-C); {where or 'nothing was checkpointed'}", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()


def _train_and_evaluate(trainer: Trainer, state: dict | None, args: argparse.Namespace, out: Path) -> int:
    checkpoint = out / CHECKPOINT
    if trainer.rank == 0:
        if args.overwrite:
            # All or nothing: the old checkpoint goes first (one unlink), so a kill at any later
            # point leaves no checkpoint for --resume to continue next to the new run's records.
            for name in RUN_FILES:
                remove(out / name)
        for stale in out.glob(f".{CHECKPOINT}.*.tmp"):  # a save cut short by a kill: never a valid file
            stale.unlink()
        records = read_metrics(out / METRICS)
        kept = [r for r in records if r.get("step", math.inf) <= (state["step"] if state else 0)]
        write_text_atomically("".join(json.dumps(r) + "\n" for r in kept), out / METRICS)
    if state is not None:
        trainer.load(state)
        if trainer.rank == 0:
            print(f"resumed from {checkpoint} at step {trainer.step} of {trainer.config.steps}", file=sys.stderr)
    if dist.is_initialized():
        dist.barrier()

    def stop(signum, frame):  # SIGTERM (a scheduler's preemption) or Ctrl-C: checkpoint, then leave
        if trainer.stopping and signum == signal.SIGINT:
            _ignore_stops()  # a third one must not interrupt the way out
            raise KeyboardInterrupt  # a second Ctrl-C: leave now (the last checkpoint stays valid)
        trainer.request_stop()

    def leave(signum, frame):  # during the probes the run is trained and checkpointed: leave at once
        _ignore_stops()
        raise KeyboardInterrupt

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        finished = trainer.run(progress=not args.no_progress, time_budget=args.time_budget)
        _leave_process_group(trainer.device)  # every rank agreed on the last step (and on a stop)
        if not finished:
            _ignore_stops()
            print(f"stopped; {checkpoint} holds step {trainer.step}: continue with --resume", file=sys.stderr)
            return 130
        if trainer.budget_spent and trainer.rank == 0:
            print(
                f"--time-budget {args.time_budget:g} s spent at step {trainer.step} of {trainer.config.steps}; "
                f"{checkpoint} holds it (--resume continues)",
                file=sys.stderr,
            )
        if trainer.rank == 0:
            signal.signal(signal.SIGTERM, leave)
            signal.signal(signal.SIGINT, leave)
            try:
                if trainer.stopping:  # a signal between the last checkpoint and the handlers above
                    raise KeyboardInterrupt
                _probe_and_plot(trainer, args, out)
            except KeyboardInterrupt:
                print(
                    f"stopped during the probes; {checkpoint} holds the finished run (step {trainer.step}): "
                    "--resume runs the probes again",
                    file=sys.stderr,
                )
                return 130
    finally:
        # An in-process caller gets its handlers back, except after a stop: the process is
        # leaving, and another Ctrl-C on the way out must not end it in a traceback.
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return 0


def _ignore_stops() -> None:
    """Once stopping, further SIGTERMs and Ctrl-Cs are ignored (the way out is short)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _probe_and_plot(trainer: Trainer, args: argparse.Namespace, out: Path) -> None:
    probe = None
    if not args.no_eval:
        model_state = trainer.model.state_dict()
        probe = evaluate(trainer.config, model_state, trainer.data, trainer.device, args.classifier_epochs)
        print_table(probe)
        write_text_atomically(json.dumps(probe, indent=2) + "\n", out / "probe.json")
        append_text(json.dumps({"probe": probe}) + "\n", out / METRICS)
        plot_probes(probe, out / "probes.png")
    plot(read_metrics(out / METRICS), probe, out / "curves.png")
    written = [METRICS, "curves.png", *(["probe.json", "probes.png"] if probe else []), CHECKPOINT]
    print(f"wrote {', '.join(str(out / name) for name in written)}", file=sys.stderr)


def _run_as_script() -> NoReturn:
    """``python -m dim_fused.training.train``. Under torchrun (WORLD_SIZE > 1) the process
    ends with ``os._exit`` after flushing its output, never through the interpreter's
    finalisation: DistributedDataParallel keeps the gloo process group, and so its worker
    threads, alive after ``destroy_process_group``, and a worker that releases the tensors
    of a finished collective takes the GIL (torch drops a C++ reference to a tensor that has
    a Python object under the GIL). If that happens once finalisation has begun, CPython
    ends the thread inside a noexcept destructor: "terminate called without an active
    exception", SIGABRT, and torchrun SIGTERMs the other ranks (a rank 0 still probing lost
    its probe results). Everything a run writes is written and closed before this point."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(main())
    try:
        status = main()
    except SystemExit as exit:  # argparse: --help, a bad option
        status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except KeyboardInterrupt:  # a Ctrl-C before the run's own handlers are in place
        status = 130
    except BaseException:  # reported as the interpreter would, then the same way out
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    _run_as_script()

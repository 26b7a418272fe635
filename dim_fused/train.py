"""Train Deep InfoMax: ``python -m dim_fused.train`` (``--help`` lists the options).

Writes into ``--out``: ``metrics.jsonl`` (one JSON object per logged step, then the
linear-probe results), ``curves.png``, ``checkpoint.pt`` (written to a temporary file,
then renamed: a crash never leaves a broken or missing checkpoint) and ``probe.json``.
``--resume`` continues from ``checkpoint.pt`` exactly where it stopped.

Several processes: ``torchrun --nproc_per_node N -m dim_fused.train ...`` (gloo on
CPU, NCCL on GPUs). Each process takes ``--batch-size`` images of every global batch;
the encoder and critics are wrapped in DistributedDataParallel, BatchNorm statistics
span all ranks, and the encode-and-dot critic takes its negatives from every rank.
"""

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.distributed as dist

from . import _dispatch, distributed
from . import data as datasets
from .models import CRITICS, ENCODERS, PRESETS, DeepInfoMax, DIMConfig

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclasses.dataclass
class TrainConfig:
    """A training run (saved in its checkpoints). ``steps`` counts optimizer steps;
    ``batch_size`` is per process."""

    model: DIMConfig
    data: str = "digits"
    data_dir: str = "data"
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-4
    prior_lr: float = 1e-4
    seed: int = 0
    amp: bool = False
    log_every: int = 10
    checkpoint_every: int = 250
    probe_samples: int = 10000

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = DIMConfig(**self.model)
        if self.data not in datasets.DATASETS:
            raise ValueError(f"data must be one of {', '.join(datasets.DATASETS)}; got {self.data!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch size must be at least 2 (DIM's negatives are other images), got {self.batch_size}")
        for name in ("steps", "log_every", "checkpoint_every", "probe_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "prior_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive learning rate, got {value}")


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a temporary file in ``path``'s folder, flushed to disk, then
    renamed over ``path``: readers see the old file or the new one, never a torn one,
    and a failed write leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_atomically(obj: Any, path: Path) -> None:
    write_atomically(path, lambda f: torch.save(obj, f))


def write_text_atomically(text: str, path: Path) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_model(config: DIMConfig, seed: int) -> DeepInfoMax:
    """The model's initial weights follow ``seed`` alone (the untrained baseline of the
    probe is rebuilt from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DeepInfoMax(config)


class Trainer:
    """One training run: data, model, optimisers and generators on one device (one rank
    under torch.distributed). ``run()`` trains; ``train_step(images)`` is one step of
    both players; ``state()`` / ``load(state)`` are exact checkpoints."""

    def __init__(self, config: TrainConfig, out: str | os.PathLike, device: str | None = None) -> None:
        self.config, self.out = config, Path(out)
        self.rank, self.world = distributed.world()
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.data = datasets.load(config.data, config.data_dir)
        model, channels = config.model, self.data.channels
        if model.in_channels != channels:
            raise ValueError(f"{config.data} has {channels}-channel images; the model reads {model.in_channels}")
        size = ENCODERS[model.architecture].image_size
        if size != self.data.crop:
            raise ValueError(f"{config.data} gives {self.data.crop}-pixel inputs; {model.architecture} reads {size}")
        self.global_batch = config.batch_size * self.world
        self.steps_per_epoch = len(self.data.unlabeled.labels) // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{config.data} has {len(self.data.unlabeled.labels)} training images, fewer than one global batch "
                f"({config.batch_size} x {self.world} processes)"
            )
        _dispatch.resolve(config.model.backend, self.device)  # an unavailable backend fails here, with its fix
        self.model = build_model(config.model, config.seed).to(self.device)
        if self.world > 1:
            distributed.convert_batchnorm(self.model)
        self.encoder_optimizer = torch.optim.Adam(self.model.encoder_parameters(), lr=config.lr)
        self.prior_optimizer = (
            torch.optim.Adam(self.model.prior_parameters(), lr=config.prior_lr, betas=(0.5, 0.999))
            if self.model.prior is not None
            else None
        )
        self.trainable = self.model
        if self.world > 1:
            # The prior discriminator plays its own game; its gradients are averaged by hand.
            ignore = [f"prior.{name}" for name, _ in self.model.prior.named_parameters()] if self.model.prior else []
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, ignore)
            self.trainable = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # shared: identical on every rank (prior samples for the global batch); local: this rank's negatives/crops.
        self.shared = torch.Generator(self.device).manual_seed(config.seed)
        self.local = torch.Generator(self.device).manual_seed(config.seed + 1 + self.rank)
        self.step = 0
        self._stop = False
        self._order: tuple[int, torch.Tensor] = (-1, torch.empty(0))

    # ---- data ---------------------------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor:
        """This rank's image indices for ``step``: a pure function of (seed, step)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:
            seed = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.data.unlabeled.labels), generator=seed))
        start = position * self.global_batch + self.rank * self.config.batch_size
        return self._order[1][start : start + self.config.batch_size]

    # ---- one step -----------------------------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp):
            out = self.trainable(images, generator=self.local)
        self.encoder_optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.encoder_optimizer.step()
        metrics = {"loss": out.loss, "global_mi": out.global_mi, "local_mi": out.local_mi, "prior": out.prior}
        if self.prior_optimizer is not None:
            batch, dim = out.code.shape
            samples = torch.rand(self.world * batch, dim, generator=self.shared, device=self.device)
            samples = samples[self.rank * batch : (self.rank + 1) * batch]
            loss, stats = self.model.prior_loss(out.code, samples)
            self.prior_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(self.model.prior_parameters())
            self.prior_optimizer.step()
            metrics.update(stats)
        return {k: v.detach().float() for k, v in metrics.items()}

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        local_states = [self.local.get_state()]
        if self.world > 1:
            local_states = [None] * self.world
            dist.all_gather_object(local_states, self.local.get_state().cpu())
        return {
            "format": 1,
            "config": dataclasses.asdict(self.config),
            "step": self.step,
            "world_size": self.world,
            "model": self.model.state_dict(),
            "encoder_optimizer": self.encoder_optimizer.state_dict(),
            "prior_optimizer": None if self.prior_optimizer is None else self.prior_optimizer.state_dict(),
            "generators": {"shared": self.shared.get_state().cpu(), "local": [s.cpu() for s in local_states]},
        }

    def save(self) -> None:
        state = self.state()  # every rank takes part in gathering the generator states
        if self.rank == 0:
            save_atomically(state, self.out / CHECKPOINT)

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.encoder_optimizer.load_state_dict(state["encoder_optimizer"])
        if self.prior_optimizer is not None:
            self.prior_optimizer.load_state_dict(state["prior_optimizer"])
        self.shared.set_state(state["generators"]["shared"])
        local = state["generators"]["local"]
        if len(local) == self.world:
            self.local.set_state(local[self.rank])
        elif self.rank == 0:
            print(
                f"note: checkpoint from {len(local)} processes, resuming on {self.world}: negatives differ",
                file=sys.stderr,
            )
        self.step = state["step"]

    # ---- the loop -----------------------------------------------------------------------------------------------
    def batches(self) -> Iterator[torch.Tensor]:
        split = self.data.unlabeled
        while self.step < self.config.steps:
            images = split.images[self.batch_indices(self.step)].to(self.device, non_blocking=True)
            yield datasets.to_inputs(images, self.data.crop, self.local)

    def stop_requested(self) -> bool:
        """Whether a stop was asked for. Several ranks agree on it (an all-reduce, a host
        sync) only at logging steps, where the loop synchronises anyway, so they stop at
        the same step within ``log_every`` steps of the signal."""
        if self.world == 1:
            return self._stop
        if self.step % self.config.log_every != 0 and self.step != self.config.steps:
            return False
        flag = torch.tensor([float(self._stop)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def stopping(self) -> bool:
        return self._stop

    def request_stop(self) -> None:
        """Ask the loop to checkpoint and leave after the step in flight (signal-safe)."""
        self._stop = True

    def run(self, progress: bool = True) -> bool:
        """Train up to ``config.steps``, logging and checkpointing. After
        ``request_stop()`` (the CLI calls it on SIGTERM and Ctrl-C), the step in flight
        finishes, a checkpoint is written and False is returned; True when done."""
        config = self.config
        metrics_file = self.out / METRICS
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm

            interval = 0.1 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s
            bar = tqdm(total=config.steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=interval)
        sums: dict[str, torch.Tensor] = {}
        window_steps, window_start = 0, time.perf_counter()
        try:
            for images in self.batches():
                for key, value in self.train_step(images).items():
                    sums[key] = sums.get(key, 0) + value
                self.step += 1
                window_steps += 1
                if self.step % config.log_every == 0 or self.step == config.steps:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    now = time.perf_counter()
                    names = sorted(sums)
                    means = torch.stack([sums[k] for k in names]) / window_steps
                    if self.world > 1:  # the record is the mean over ranks
                        dist.all_reduce(means)
                        means /= self.world
                    record = {"step": self.step, "epoch": self.step / self.steps_per_epoch}
                    record.update(zip(names, means.tolist(), strict=True))
                    record["steps_per_s"] = window_steps / (now - window_start)
                    if self.rank == 0:
                        with open(metrics_file, "a") as f:
                            f.write(json.dumps(record) + "\n")
                        if bar is not None:
                            bar.set_postfix(
                                loss=f"{record['loss']:.3f}",
                                local_mi=f"{record['local_mi']:.3f}",
                                steps_s=f"{record['steps_per_s']:.1f}",
                                refresh=False,  # the bar redraws at its own pace (mininterval)
                            )
                    sums, window_steps, window_start = {}, 0, time.perf_counter()
                if bar is not None:
                    bar.update(1)
                stop = self.stop_requested()
                if stop or self.step % config.checkpoint_every == 0 or self.step == config.steps:
                    self.save()
                if stop:
                    return False
            return True
        finally:
            if bar is not None:
                bar.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a line torn by a kill is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot(records: list[dict[str, Any]], probe: dict[str, Any] | None, path: Path) -> None:
    """Loss, MI estimates and accuracies against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records if "step" in r]
    rows = [r for r in records if "step" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, [r["loss"] for r in rows])
    axes[0].set(title="encoder loss", xlabel="step")
    for key in ("local_mi", "global_mi"):
        if any(r[key] for r in rows):
            axes[1].plot(steps, [r[key] for r in rows], label=key)
    axes[1].set(title="MI estimates (higher = more MI)", xlabel="step")
    axes[1].legend()
    if rows and "prior_accuracy" in rows[0]:
        axes[2].plot(steps, [r["prior_accuracy"] for r in rows], label="prior discriminator")
    if probe:
        for i, (name, accuracy) in enumerate(probe["trained"].items()):
            axes[2].axhline(accuracy, linestyle="--", color=f"C{i + 1}", label=f"probe {name}: {accuracy:.3f}")
        untrained = probe["random"]["global"]
        axes[2].axhline(untrained, linestyle=":", color="C1", label=f"probe global, random encoder: {untrained:.3f}")
    axes[2].set(title="accuracy", xlabel="step", ylim=(0, 1.02))
    axes[2].legend(fontsize="small")
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):  # flags, and options whose help says their default
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dim_fused.train",
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
            from .evaluate import evaluate, print_table

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

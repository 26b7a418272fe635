"""The training loop of Deep InfoMax: one ``Trainer`` per process (one rank under
torch.distributed), exact checkpoints, and the metrics records of a run folder."""

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import dim_fused
from dim_fused import distributed

from . import data as datasets
from .checkpoint import CheckpointError, append_text, save_atomically
from .config import ENCODERS, TrainConfig
from .graphs import GraphedStep
from .models import build_model

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class Diverged(ArithmeticError):
    """The loss or the weights stopped being finite (NaN or inf): training cannot go on,
    and the last checkpoint (which was finite) must not be replaced."""


class Trainer:
    """One training run: data, model, optimisers and generators on one device (one rank
    under torch.distributed). ``run()`` trains; ``train_step(images)`` is one step of
    both players; ``state()`` / ``load(state)`` are exact checkpoints."""

    def __init__(
        self,
        config: TrainConfig,
        out: str | os.PathLike,
        device: str | None = None,
        data: datasets.ImageData | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        """``data``: any ``ImageData`` (e.g. ``ImageData.from_tensors``) named ``config.data``,
        instead of loading the built-in dataset of that name. ``cuda_graphs``: replay each
        step's update as one CUDA graph (``graphs.GraphedStep``); default: on a CUDA device
        in a single process, off elsewhere (several processes: DDP's gradient all-reduce is
        not captured here). The same steps either way; a setting of the run, not of the
        checkpoint."""
        self.config, self.out = config, Path(out)
        self.rank, self.world = distributed.world()
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {device}: torch sees no CUDA GPU on this machine (use --device cpu)")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            if self.device.index >= torch.cuda.device_count():
                raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
            torch.cuda.set_device(self.device)
        model = config.model
        size = ENCODERS[model.architecture].image_size
        if data is not None and data.name != config.data:
            raise ValueError(f"the data given is {data.name!r} but the config names {config.data!r}")
        self.data = data if data is not None else datasets.load(config.data, config.data_dir, size)
        channels = self.data.channels
        if model.in_channels != channels:
            raise ValueError(f"{config.data} has {channels}-channel images; the model reads {model.in_channels}")
        if size != self.data.crop:
            raise ValueError(f"{config.data} gives {self.data.crop}-pixel inputs; {model.architecture} reads {size}")
        self.global_batch = config.batch_size * self.world
        self.steps_per_epoch = len(self.data.unlabeled.labels) // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{config.data} has {len(self.data.unlabeled.labels)} training images, fewer than one global batch "
                f"({config.batch_size} x {self.world} processes)"
            )
        dim_fused.resolve_backend(config.model.backend, self.device)  # an unavailable backend fails here, with its fix
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and self.world == 1
        elif cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; this run is on {self.device} (turn them off)")
        elif cuda_graphs and self.world > 1:
            raise ValueError(f"CUDA graphs are for one process; this run has {self.world} (turn them off)")
        self.cuda_graphs = cuda_graphs
        self.model = build_model(config.model, config.seed).to(self.device)
        if self.world > 1:
            distributed.convert_batchnorm(self.model)
        # capturable: Adam keeps its step count on the device, so a graph replays the whole step.
        self.encoder_optimizer = torch.optim.Adam(
            self.model.encoder_parameters(), lr=config.lr, betas=config.betas, capturable=cuda_graphs
        )
        self.prior_optimizer = (
            torch.optim.Adam(
                self.model.prior_parameters(), lr=config.prior_lr, betas=config.betas, capturable=cuda_graphs
            )
            if self.model.prior is not None
            else None
        )
        self._update = GraphedStep(self.update, self.device) if cuda_graphs else self.update
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
        # The metrics window: sums of each metric over the steps since the last record. It is
        # part of the checkpoint, so a stopped and resumed run writes the same records.
        self._window_sums: dict[str, torch.Tensor] = {}
        self._window_steps = 0
        self._stop = False
        self.budget_spent = False  # whether the last run() ended at its time budget
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
        """One step on ``images``: its random draws (the concat critics' negatives from this
        rank's generator, the prior's samples from the shared one), then ``update``."""
        config = self.config.model
        negatives = self.model.negatives(images.shape[0] // config.views, self.local, self.device)
        samples = None
        if self.prior_optimizer is not None:
            batch = images.shape[0]
            samples = torch.rand(self.world * batch, config.code_dim, generator=self.shared, device=self.device)
            samples = samples[self.rank * batch : (self.rank + 1) * batch]
        return self._update(images, negatives, samples)

    def update(
        self, images: torch.Tensor, negatives: dict[str, list[torch.Tensor]], samples: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The step without randomness: the encoder's and the critics' update on the loss,
        then the prior discriminator's on ``samples``; its metrics stay on the device (no
        host sync: the loop reads them once per logging window). Under CUDA graphs, what
        ``graphs.GraphedStep`` replays."""
        self.model.train()
        # Autocast's cache of cast weights must not outlive a captured step.
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.config.amp, cache_enabled=not self.cuda_graphs
        ):
            out = self.trainable(images, negatives=negatives)
        self.encoder_optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.encoder_optimizer.step()
        metrics = {"loss": out.loss, "global_mi": out.global_mi, "local_mi": out.local_mi, "prior": out.prior}
        if self.prior_optimizer is not None:
            loss, stats = self.model.prior_loss(out.code, samples)
            self.prior_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(self.model.prior_parameters())
            self.prior_optimizer.step()
            metrics.update(stats)
        return {k: v.detach().float() for k, v in metrics.items()}

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def _per_rank(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (every rank must call this)."""
        if self.world == 1:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def state(self) -> dict[str, Any]:
        local_states = self._per_rank(self.local.get_state().cpu())
        window = {"steps": self._window_steps, "sums": {k: v.cpu() for k, v in self._window_sums.items()}}
        return {
            "format": 1,
            "config": dataclasses.asdict(self.config),
            "step": self.step,
            "world_size": self.world,
            "model": self.model.state_dict(),
            "encoder_optimizer": self.encoder_optimizer.state_dict(),
            "prior_optimizer": None if self.prior_optimizer is None else self.prior_optimizer.state_dict(),
            "generators": {"shared": self.shared.get_state().cpu(), "local": local_states},
            "metrics_windows": self._per_rank(window),
        }

    def weights_finite(self) -> bool:
        """Whether every floating-point weight and buffer is finite: one host sync (and one
        all-reduce under several processes, so every rank gives the same answer)."""
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all().float()
        if self.world > 1:
            finite = finite.to(self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def save(self) -> None:
        # Checked where the loop syncs anyway: a diverged model never replaces the last good checkpoint.
        if not self.weights_finite():
            raise Diverged(f"at step {self.step} the weights are not finite (NaN or inf)")
        state = self.state()  # every rank takes part in gathering the generator states
        if self.rank == 0:
            save_atomically(state, self.out / CHECKPOINT)

    def load(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a checkpoint, see ``checkpoint.validate_checkpoint``)
        with this trainer's config: a part that does not fit (a CPU generator's state on a
        GPU) raises CheckpointError naming it."""
        part = "model"
        try:
            self.model.load_state_dict(state["model"])
            part = "encoder_optimizer"
            self.encoder_optimizer.load_state_dict(state["encoder_optimizer"])
            if self.prior_optimizer is not None:
                part = "prior_optimizer"
                self.prior_optimizer.load_state_dict(state["prior_optimizer"])
            part = "generators"
            self.shared.set_state(state["generators"]["shared"])
            local = state["generators"]["local"]
            if len(local) == self.world:
                self.local.set_state(local[self.rank])
                part = "metrics_windows"
                window = state.get("metrics_windows", [{"steps": 0, "sums": {}}] * self.world)[self.rank]
                self._window_steps = window["steps"]
                self._window_sums = {k: v.to(self.device) for k, v in window["sums"].items()}
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            raise CheckpointError(f"the checkpoint's {part} does not fit this run: {error}") from error
        # The restored param_groups carry the saved learning rates and capturable flag; a
        # resumed run may change the rates (--lr, --prior-lr) and its device and CUDA-graph
        # setting: the config and this trainer hold the ones to use from here on.
        _set_groups(self.encoder_optimizer, lr=self.config.lr, capturable=self.cuda_graphs)
        if self.prior_optimizer is not None:
            _set_groups(self.prior_optimizer, lr=self.config.prior_lr, capturable=self.cuda_graphs)
        if isinstance(self._update, GraphedStep):
            self._update.reset()  # the optimisers' state tensors are new ones
        if len(local) != self.world and self.rank == 0:
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
            views = [
                datasets.to_inputs(images, self.data.crop, self.local, self.config.augment)
                for _ in range(self.config.model.views)
            ]
            yield views[0] if len(views) == 1 else torch.cat(views)

    def stop_requested(self, out_of_time: bool = False) -> tuple[bool, bool]:
        """(whether a stop was asked for, whether the time budget is spent: at logging steps
        only). Several ranks agree on both (an all-reduce, a host sync) only at logging
        steps, where the loop synchronises anyway, so they stop at the same step within
        ``log_every`` steps."""
        logging_step = self.step % self.config.log_every == 0 or self.step == self.config.steps
        if self.world == 1:
            return self._stop, out_of_time and logging_step
        if not logging_step:
            return False, False
        device = self.device if self.device.type == "cuda" else "cpu"
        flags = torch.tensor([float(self._stop), float(out_of_time)], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, spent = flags.tolist()
        return bool(stop), bool(spent)

    @property
    def stopping(self) -> bool:
        return self._stop

    def request_stop(self) -> None:
        """Ask the loop to checkpoint and leave after the step in flight (signal-safe)."""
        self._stop = True

    def run(self, progress: bool = True, time_budget: float | None = None) -> bool:
        """Train up to ``config.steps``, logging and checkpointing. After
        ``request_stop()`` (the CLI calls it on SIGTERM and Ctrl-C), the step in flight
        finishes, a checkpoint is written and False is returned; True when done. With
        ``time_budget`` (seconds of this call), training also ends, checkpointed, at the
        first logging step past it, and True is returned with ``budget_spent`` set
        (``--resume`` continues to ``config.steps``)."""
        config = self.config
        deadline = None if time_budget is None else time.monotonic() + time_budget
        self.budget_spent = False
        metrics_file = self.out / METRICS
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm

            interval = 0.1 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s
            bar = tqdm(total=config.steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=interval)
        timed_steps, window_start = 0, time.perf_counter()  # steps/s counts this process's steps only
        try:
            for images in self.batches():
                for key, value in self.train_step(images).items():
                    self._window_sums[key] = self._window_sums.get(key, 0) + value
                self.step += 1
                self._window_steps += 1
                timed_steps += 1
                if self.step % config.log_every == 0 or self.step == config.steps:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    now = time.perf_counter()
                    names = sorted(self._window_sums)
                    means = torch.stack([self._window_sums[k] for k in names]) / self._window_steps
                    if self.world > 1:  # the record is the mean over ranks
                        dist.all_reduce(means)
                        means /= self.world
                    values = means.tolist()
                    # Checked here, where the loop syncs anyway (no host sync per step).
                    diverged = [f"{k} {v}" for k, v in zip(names, values, strict=True) if not math.isfinite(v)]
                    if diverged:
                        raise Diverged(f"at step {self.step} the metrics are not finite ({', '.join(diverged)})")
                    record = {"step": self.step, "epoch": self.step / self.steps_per_epoch}
                    record.update(zip(names, values, strict=True))
                    record["steps_per_s"] = timed_steps / (now - window_start)
                    if self.rank == 0:
                        append_text(json.dumps(record) + "\n", metrics_file)
                        if bar is not None:
                            bar.set_postfix(
                                loss=f"{record['loss']:.3f}",
                                local_mi=f"{record['local_mi']:.3f}",
                                steps_s=f"{record['steps_per_s']:.1f}",
                                refresh=False,  # the bar redraws at its own pace (mininterval)
                            )
                    self._window_sums, self._window_steps = {}, 0
                    timed_steps, window_start = 0, time.perf_counter()
                if bar is not None:
                    bar.update(1)
                stop, self.budget_spent = self.stop_requested(deadline is not None and time.monotonic() >= deadline)
                if stop or self.budget_spent or self.step % config.checkpoint_every == 0 or self.step == config.steps:
                    self.save()
                if stop:
                    return False
                if self.budget_spent:
                    return True
            return True
        finally:
            if bar is not None:
                bar.close()


def _set_groups(optimizer: torch.optim.Optimizer, lr: float, capturable: bool) -> None:
    """Every param group's learning rate and capturable flag, with Adam's step counts where
    that flag wants them: on the parameter's device when capturable, else on the CPU."""
    for group in optimizer.param_groups:
        group["lr"], group["capturable"] = lr, capturable
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(parameter.device if capturable else "cpu", torch.float32)


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

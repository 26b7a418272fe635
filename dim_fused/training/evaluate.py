"""Probes on frozen DIM features: ``python -m dim_fused.training.evaluate CHECKPOINT``.

For the global code Y, the last fc layer and the last conv layer (the paper's Y, fc and
conv features), of the trained encoder and of the same encoder at its random
initialisation, and for the raw pixels (the encoder's inputs, the baseline), each scored
on the dataset's held-out test split:

- ``linear``: a standardised multinomial logistic regression (L-BFGS, the L2 penalty of
  scikit-learn's default C = 1), fitted on the training split (``fit_logistic_regression``:
  a large problem in float32, preconditioned, in seconds);
- ``nonlinear``: the paper's classifier (Tables 1 and 2; cortex_DIM's classifier): one
  200-unit hidden layer, Linear - Dropout(0.1) - BatchNorm - ReLU - Linear, Adam (betas
  0.5/0.999, the official code's), on the training split: the paper's 100 epochs of
  batches of 64 at lr 1e-4 on a GPU, 30 epochs of 256 at 4e-4 on a CPU (``classifier_recipe``);
- ``few_labels``: label efficiency, the linear probe fitted on 1 and on 10 labelled images
  per class (standardised with the statistics of the whole training split, which need no
  labels), the mean and spread over several random draws.

Everything runs in torch on the encoder's device (a GPU when there is one). The features
are extracted once per encoder and shared by every probe.
"""

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from . import data as datasets
from .checkpoint import load_checkpoint, write_text_atomically
from .config import ENCODERS, TrainConfig
from .models import Encoder, build_model

FEATURES: tuple[str, ...] = ("global", "fc", "conv")
SHOTS: tuple[int, ...] = (1, 10)

# The logistic regression's solvers. A small problem (at most SMALL_PROBLEM feature values:
# the few-label fits) or one with fewer images than features is solved in float64 to a
# gradient of 1e-9, as scikit-learn would. A large one (60000 x 4096 conv features) in
# float32 by L-BFGS preconditioned with the features' covariance, for at most
# FAST_ITERATIONS iterations: on Fashion-MNIST conv features within 0.1 point of the
# optimum's test accuracy (at 100 iterations, within 0.35).
SMALL_PROBLEM = 1 << 20
FAST_ITERATIONS = 150
FAST_TOLERANCE = 1e-5


@torch.no_grad()
def extract(
    encoder: Encoder, images: torch.Tensor, crop: int, device: torch.device, batch: int = 256
) -> dict[str, torch.Tensor]:
    """Frozen features (eval mode: BatchNorm running statistics) of uint8 images, on device."""
    encoder.eval()
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in FEATURES}
    for start in range(0, len(images), batch):
        x = datasets.to_inputs(images[start : start + batch].to(device), crop)
        features = encoder(x)
        for name, value in zip(FEATURES, (features.code, features.fc, features.conv), strict=True):
            parts[name].append(value.flatten(1).float())
    return {name: torch.cat(values) for name, values in parts.items()}


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def _standardise(
    features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """(features - mean) / scale in ``dtype``, in place in one copy (50000 CIFAR conv
    features are 0.8 GB of it in float32)."""
    return features.to(dtype, copy=True).sub_(mean).div_(scale)


def _statistics(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training features' mean and standard deviation (1 where a feature is constant)."""
    std = train.std(0)
    return train.mean(0), torch.where(std > 1e-8, std, torch.ones_like(std))


def _whitening(x: torch.Tensor) -> torch.Tensor | None:
    """P = L^-T, with L L^T = cov(x) + delta I (Cholesky, in float64), in x's dtype: x @ P
    has (nearly) the identity as covariance. None when the Cholesky factorisation fails."""
    n, d = x.shape
    covariance = torch.empty(d, d, dtype=torch.float64, device=x.device)
    for start in range(0, d, 512):  # the upper blocks, mirrored: half of x.T @ x's work
        block = torch.mm(x[:, start : start + 512].T, x[:, start:]).double().div_(n)
        covariance[start : start + 512, start:] = block
        covariance[start:, start : start + 512] = block.T
    # delta ~ the L2 penalty's curvature (1 / n) over a typical softmax curvature (~0.05);
    # at least 1e-4 of the standardised features' unit variance (float32 rounding).
    delta = max(20.0 / n, 1e-4)
    eye = torch.eye(d, dtype=torch.float64, device=x.device)
    for _ in range(3):
        factor, info = torch.linalg.cholesky_ex(covariance + delta * eye)
        if int(info) == 0:
            return torch.linalg.solve_triangular(factor.T, eye, upper=True).to(x.dtype)
        delta *= 100
    return None


def fit_logistic_regression(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a multinomial logistic regression on standardised features ``x``,
    L2 penalty 1 / (2 n) as scikit-learn's LogisticRegression(C=1), by L-BFGS in x's dtype:
    float64, to a gradient of 1e-9 (at most 500 iterations), or float32 for at most
    FAST_ITERATIONS iterations, with the weights W = P V preconditioned (``_whitening``)
    when there are at least as many samples as features. The optimum is the same problem's
    either way; the gradient is computed by hand, as (G^T X)^T (X^T G is several times
    slower on a CPU)."""
    n, d = x.shape
    exact = x.dtype == torch.float64
    labels = labels.to(x.device)
    precondition = None if exact or n < d else _whitening(x)
    v = torch.zeros(d, num_classes, dtype=x.dtype, device=x.device)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    rows = torch.arange(n, device=x.device)
    optimizer = torch.optim.LBFGS(
        [v, bias],
        max_iter=500 if exact else FAST_ITERATIONS,
        tolerance_grad=1e-9 if exact else FAST_TOLERANCE,
        history_size=10 if exact else 30,
        line_search_fn="strong_wolfe",
    )

    def weight() -> torch.Tensor:
        return v if precondition is None else precondition @ v

    def objective() -> torch.Tensor:
        with torch.no_grad():
            w = weight()
            log_p = torch.log_softmax(torch.addmm(bias, x, w), 1)
            loss = w.pow(2).sum() / (2 * n) - log_p[rows, labels].sum() / n
            residual = log_p.exp_()  # softmax - one-hot, / n: d loss / d logits
            residual[rows, labels] -= 1
            residual /= n
            grad_w = torch.mm(residual.T, x).T + w / n
            v.grad = (grad_w if precondition is None else precondition.T @ grad_w).contiguous()
            bias.grad = residual.sum(0)
        return loss

    optimizer.step(objective)
    return weight(), bias


def logistic_regression_accuracy(
    x: torch.Tensor, labels: torch.Tensor, x_test: torch.Tensor, test_labels: torch.Tensor, num_classes: int
) -> float:
    """Test accuracy of ``fit_logistic_regression`` on standardised features (float64:
    the exact solver; float32: the fast one)."""
    weight, bias = fit_logistic_regression(x, labels, num_classes)
    with torch.no_grad():
        return _accuracy(x_test @ weight + bias, test_labels.to(x.device))


def linear_probe(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> float:
    """Test accuracy of the logistic regression on features standardised with the
    training features' mean and standard deviation (``statistics``, when already known),
    in float32 when there are more than SMALL_PROBLEM of them and more images than
    features (the fast solver), else in float64 (the exact one)."""
    mean, scale = _statistics(train) if statistics is None else statistics
    fast = train.numel() > SMALL_PROBLEM and train.shape[0] >= train.shape[1]
    dtype = torch.float32 if fast else torch.float64
    x, x_test = _standardise(train, mean, scale, dtype), _standardise(test, mean, scale, dtype)
    return logistic_regression_accuracy(x, train_labels, x_test, test_labels, num_classes)


class Classifier(nn.Sequential):
    """The paper's nonlinear classifier: Linear - Dropout(0.1) - BatchNorm - ReLU - Linear,
    200 hidden units (cortex_DIM orders dropout before BatchNorm)."""

    def __init__(self, fan_in: int, num_classes: int, hidden: int = 200) -> None:
        super().__init__(
            nn.Linear(fan_in, hidden),
            nn.Dropout(0.1),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


class ClassifierRecipe(NamedTuple):
    """How the nonlinear classifier is trained: epochs, batch size, Adam's learning rate."""

    epochs: int
    batch_size: int
    lr: float


# The paper's (the official code's): 100 epochs, batches of 64, lr 1e-4: on a GPU. On a CPU
# that is over an hour for 60000 x 4096 conv features; CPU_CLASSIFIER trains 30 epochs of
# batches of 256 at a learning rate scaled with the batch (4e-4: larger ones were unstable).
PAPER_CLASSIFIER = ClassifierRecipe(100, 64, 1e-4)
CPU_CLASSIFIER = ClassifierRecipe(30, 256, 4e-4)


def classifier_lr(batch_size: int) -> float:
    """Adam's learning rate for batches of ``batch_size``: the paper's 1e-4 at 64, scaled
    linearly with the batch size."""
    return PAPER_CLASSIFIER.lr * batch_size / PAPER_CLASSIFIER.batch_size


def classifier_recipe(
    device: torch.device, epochs: int | None = None, batch_size: int | None = None
) -> ClassifierRecipe:
    """The nonlinear classifier's recipe on ``device``: the paper's on a GPU, CPU_CLASSIFIER
    on a CPU, with ``epochs`` and ``batch_size`` overriding theirs (the learning rate follows
    the batch size, ``classifier_lr``)."""
    default = PAPER_CLASSIFIER if torch.device(device).type == "cuda" else CPU_CLASSIFIER
    epochs = default.epochs if epochs is None else epochs
    batch_size = default.batch_size if batch_size is None else batch_size
    if epochs < 0:
        raise ValueError(f"--classifier-epochs {epochs}: give 0 (no nonlinear probe) or more")
    if batch_size < 2:
        raise ValueError(f"--classifier-batch {batch_size}: give at least 2 (BatchNorm needs two samples)")
    return ClassifierRecipe(epochs, batch_size, classifier_lr(batch_size))


def nonlinear_probe(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    epochs: int,
    seed: int,
    batch_size: int = PAPER_CLASSIFIER.batch_size,
    lr: float | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> float:
    """Test accuracy of the paper's classifier after `epochs` passes over the training
    features in batches of `batch_size` (Adam at `lr`, by default ``classifier_lr``), the
    last epoch's model: no selection on the test split. Seeded: its initialisation, batch
    order and dropout follow `seed` alone. ``on_epoch(epoch)`` after each epoch."""
    lr = classifier_lr(batch_size) if lr is None else lr
    with torch.random.fork_rng(devices=[train.device] if train.is_cuda else []):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        classifier = Classifier(train.shape[1], num_classes).to(train.device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, betas=(0.5, 0.999))
        labels = train_labels.to(train.device)
        classifier.train()
        for epoch in range(epochs):
            order = torch.randperm(len(train), generator=generator).to(train.device)
            for start in range(0, len(train), batch_size):
                batch = order[start : start + batch_size]
                if len(batch) < 2:  # BatchNorm needs two samples
                    continue
                loss = nn.functional.cross_entropy(classifier(train[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if on_epoch is not None:
                on_epoch(epoch + 1)
        classifier.eval()
        with torch.no_grad():
            return _accuracy(classifier(test), test_labels.to(test.device))


def few_label_probe(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    shots: int,
    draws: int,
    seed: int,
    statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mean and standard deviation over `draws` of the linear probe's accuracy when fitted
    on `shots` random labelled images per class (a small problem: the exact float64 solver,
    which converges in well under 500 iterations)."""
    # Standardised with every training image's statistics: no labels needed.
    mean, scale = _statistics(train) if statistics is None else statistics
    x_test = _standardise(test, mean, scale)  # once for every draw
    accuracies = []
    for draw in range(draws):
        generator = torch.Generator().manual_seed(seed * 1000 + 17 * shots + draw)
        chosen = []
        for label in range(num_classes):
            members = (train_labels == label).nonzero().squeeze(1)
            chosen.append(members[torch.randperm(len(members), generator=generator)[:shots]])
        chosen = torch.cat(chosen).to(train.device)
        labels = train_labels.to(train.device)[chosen]
        x = _standardise(train[chosen], mean, scale)
        accuracies.append(logistic_regression_accuracy(x, labels, x_test, test_labels, num_classes))
    mean = sum(accuracies) / len(accuracies)
    spread = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / max(1, len(accuracies) - 1))
    return {"mean": mean, "std": spread, "draws": len(accuracies)}


def probe_subset(train: datasets.Split, max_train: int, seed: int) -> datasets.Split:
    """The training images the probes fit on: all of them, or a fixed random subset of
    ``max_train`` (``--probe-samples``)."""
    if len(train.labels) <= max_train:
        return train
    keep = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[:max_train]
    return train.take(keep)


def check_probe_samples(data: datasets.ImageData, max_train: int, seed: int) -> None:
    """ValueError unless the probes' training images hold at least ``max(SHOTS)`` images
    of every class: fewer would report a "10 labels per class" probe fitted on fewer (and
    under two images the nonlinear classifier, whose BatchNorm needs two, never trains).
    Cheap (labels only), so the CLIs call it before training or loading any weights."""
    labels = probe_subset(data.train, max_train, seed).labels
    counts = torch.bincount(labels, minlength=data.num_classes)
    fewest, label = int(counts.min()), int(counts.argmin())
    if fewest < max(SHOTS):
        raise ValueError(
            f"--probe-samples {max_train}: the probes' {len(labels)} training images of {data.name} hold {fewest} of "
            f"class {label}; the {max(SHOTS)}-labels-per-class probe needs {max(SHOTS)} of every class "
            "(give more --probe-samples, or --no-eval)"
        )


class _Progress:
    """One tqdm bar over every step of the probes (a feature extraction, a probe's fit), on
    stderr, its postfix naming the step in flight; as the trainer's bar, redrawn at most
    every 30 s when stderr is not a terminal (a log file), and nothing when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        self.interval = 0.1 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="probes", unit="fit", dynamic_ncols=True, mininterval=self.interval)

    def start(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            now = time.time()
            if now - self.bar.last_print_t >= self.interval:  # at the bar's own pace
                self.bar.refresh()
                self.bar.last_print_t = now

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _probe_steps(classifier_epochs: int, layers: int = len(FEATURES)) -> int:
    """The steps of probing one encoder (or the pixels): an extraction, then per feature
    layer the linear probe, the nonlinear one (unless 0 epochs) and a few-label probe per
    shot count."""
    return 1 + layers * (1 + (classifier_epochs > 0) + len(SHOTS))


@torch.no_grad()
def pixels(images: torch.Tensor, crop: int, device: torch.device, batch: int = 1024) -> torch.Tensor:
    """The raw-pixel baseline's features: the encoder's inputs (centre-cropped, in [-1, 1]),
    flattened."""
    parts = [
        datasets.to_inputs(images[i : i + batch].to(device), crop).flatten(1) for i in range(0, len(images), batch)
    ]
    return torch.cat(parts)


def probe_features(
    fit: dict[str, torch.Tensor],
    train_labels: torch.Tensor,
    score: dict[str, torch.Tensor],
    test_labels: torch.Tensor,
    num_classes: int,
    seed: int,
    recipe: ClassifierRecipe,
    draws: int = 5,
    progress: _Progress | None = None,
    name: str = "",
) -> dict[str, Any]:
    """Every probe of each layer's training (``fit``) and test (``score``) features: the
    linear, the nonlinear (``recipe``, none at 0 epochs) and the few-label probes. Each
    layer's features are dropped from ``fit`` and ``score`` once probed."""
    progress = progress or _Progress(0, enabled=False)
    prefix = f"{name} " if name else ""
    result: dict[str, Any] = {"linear": {}, "nonlinear": {}, "few_labels": {str(s): {} for s in SHOTS}}
    for layer in list(fit):
        args = (fit[layer], train_labels, score[layer], test_labels, num_classes)
        statistics = _statistics(fit[layer])  # shared by the linear and few-label probes
        progress.start(f"{prefix}linear {layer}")
        result["linear"][layer] = linear_probe(*args, statistics=statistics)
        progress.done()
        if recipe.epochs > 0:
            what = f"{prefix}nonlinear {layer}"
            progress.start(what)
            result["nonlinear"][layer] = nonlinear_probe(
                *args,
                epochs=recipe.epochs,
                seed=seed,
                batch_size=recipe.batch_size,
                lr=recipe.lr,
                on_epoch=lambda epoch, what=what: progress.start(f"{what}, epoch {epoch}/{recipe.epochs}"),
            )
            progress.done()
        for shots in SHOTS:
            progress.start(f"{prefix}{shots} per class {layer}")
            result["few_labels"][str(shots)][layer] = few_label_probe(
                *args, shots=shots, draws=draws, seed=seed, statistics=statistics
            )
            progress.done()
        del fit[layer], score[layer]  # this layer's features are done with
    return result


def probe_encoder(
    encoder: Encoder | None,
    data: datasets.ImageData,
    device: torch.device,
    max_train: int,
    seed: int,
    recipe: ClassifierRecipe,
    draws: int = 5,
    progress: _Progress | None = None,
    name: str = "",
) -> dict[str, Any]:
    """Every probe of one encoder's features (``FEATURES``), or with no encoder of the raw
    pixels (layer ``"pixels"``: the baseline an encoder must beat); the nonlinear classifier
    follows ``recipe`` (none at 0 epochs)."""
    progress = progress or _Progress(0, enabled=False)
    train = probe_subset(data.train, max_train, seed)
    progress.start(f"{name} features".strip())
    if encoder is None:
        fit, score = ({"pixels": pixels(split.images, data.crop, device)} for split in (train, data.test))
    else:
        fit, score = (extract(encoder, split.images, data.crop, device) for split in (train, data.test))
    progress.done()
    args = (fit, train.labels, score, data.test.labels, data.num_classes, seed, recipe, draws)
    return probe_features(*args, progress=progress, name=name)


def evaluate(
    config: TrainConfig,
    model_state: dict[str, torch.Tensor],
    data: datasets.ImageData,
    device: torch.device,
    classifier_epochs: int | None = None,
    classifier_batch: int | None = None,
    progress: bool = True,
) -> dict:
    """The probes of the trained encoder (``model_state``), of the same model at its
    initialisation (rebuilt from ``config.seed``) and of the raw pixels, as {"trained": ...,
    "random": ..., "pixels": ...}. The nonlinear classifier follows
    ``classifier_recipe(device, classifier_epochs, classifier_batch)``; ``progress``: a bar
    on stderr. ValueError when the probes cannot do what they report
    (``check_probe_samples``) or the recipe is impossible."""
    recipe = classifier_recipe(device, classifier_epochs, classifier_batch)
    check_probe_samples(data, config.probe_samples, config.seed)
    untrained = build_model(config.model, config.seed).encoder.to(device)
    trained = build_model(config.model, config.seed)
    trained.load_state_dict(model_state)
    trained = trained.encoder.to(device)
    probe = {
        "max_train": config.probe_samples,
        "train_images": min(config.probe_samples, len(data.train.labels)),
        "seed": config.seed,
        "classifier_epochs": recipe.epochs,
        "classifier_batch": recipe.batch_size,
        "classifier_lr": recipe.lr,
    }
    bar = _Progress(2 * _probe_steps(recipe.epochs) + _probe_steps(recipe.epochs, layers=1), progress)
    try:
        results = {
            name: probe_encoder(
                encoder, data, device, config.probe_samples, config.seed, recipe, progress=bar, name=name
            )
            for name, encoder in (("trained", trained), ("random", untrained))
        }
        results["pixels"] = probe_encoder(
            None, data, device, config.probe_samples, config.seed, recipe, progress=bar, name="pixels"
        )
    finally:
        bar.close()
    return {
        "data": config.data,
        "classes": data.num_classes,
        "test_images": len(data.test.labels),
        "probe": probe,
        **results,
    }


def _table_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(row label, result key, layer) of the table: each layer trained and random, then the pixels."""
    rows = [(f"{layer if e == 'trained' else '':<8}{e}", e, layer) for layer in FEATURES for e in ("trained", "random")]
    return rows + ([("pixels", "pixels", "pixels")] if "pixels" in result else [])


def print_table(result: dict[str, Any]) -> None:
    """The probes' test accuracies: a row per encoder and layer, a column per probe."""
    fitted = result["probe"].get("train_images", result["probe"]["max_train"])
    print(
        f"probes on {result['data']}: test accuracy on its {result['test_images']} test images; "
        f"linear and nonlinear fitted on {fitted} training images, n per class on n labelled ones (mean of draws)"
    )
    columns = ["linear", "nonlinear", *(f"{s} per class" for s in SHOTS)]
    print(f"{'':<16}" + "".join(f"{c:>14}" for c in columns))
    for label, encoder, layer in _table_rows(result):
        probes = result[encoder]
        cells = [probes[kind].get(layer) for kind in ("linear", "nonlinear")]
        cells += [probes["few_labels"][str(shots)][layer]["mean"] for shots in SHOTS]
        print(f"{label:<16}" + "".join(f"{'-' if c is None else f'{c:.4f}':>14}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dim_fused.training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint.pt written by python -m dim_fused.training.train")
    parser.add_argument("--data-dir", help="override the dataset folder saved in the checkpoint")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--classifier-epochs",
        type=int,
        help=f"the nonlinear classifier's epochs (0: none; default {PAPER_CLASSIFIER.epochs} on a GPU, the paper's, "
        f"{CPU_CLASSIFIER.epochs} on a CPU)",
    )
    parser.add_argument(
        "--classifier-batch",
        type=int,
        help=f"the nonlinear classifier's batch size (default {PAPER_CLASSIFIER.batch_size} on a GPU, the paper's, "
        f"{CPU_CLASSIFIER.batch_size} on a CPU; Adam's lr is 1e-4 x batch / 64)",
    )
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    # Everything that can be wrong is checked before the probes run (minutes on CIFAR).
    path = Path(args.checkpoint)
    try:
        device = _device(args.device)
        classifier_recipe(device, args.classifier_epochs, args.classifier_batch)  # ValueError when impossible
        if args.json:
            _check_writable(Path(args.json))
        if not path.exists():
            raise ValueError(f"no checkpoint at {path}")
        state = load_checkpoint(path)  # CheckpointError: damaged, foreign or inconsistent
        config = TrainConfig(**state["config"])
        if args.data_dir:
            config.data_dir = args.data_dir
        data = datasets.load(config.data, config.data_dir, ENCODERS[config.model.architecture].image_size)
        check_probe_samples(data, config.probe_samples, config.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        result = evaluate(
            config,
            state["model"],
            data,
            device,
            args.classifier_epochs,
            args.classifier_batch,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print("stopped: no probe results", file=sys.stderr)
        return 130
    print_table(result)
    if args.json:
        try:
            write_text_atomically(json.dumps(result, indent=2) + "\n", Path(args.json))
        except OSError as error:
            print(f"error: --json {args.json} cannot be written: {error}", file=sys.stderr)
            return 3
    return 0


def _device(name: str) -> torch.device:
    """``--device`` as a torch.device that exists on this machine, else ValueError."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name}: {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: torch sees no CUDA GPU on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def _check_writable(path: Path) -> None:
    """ValueError unless ``path`` can be written (atomically: into its folder)."""
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"--json {path} is a folder, not a file")
    if not folder.is_dir():
        raise ValueError(f"--json {path}: its folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--json {path}: its folder {folder} is not writable")


if __name__ == "__main__":
    sys.exit(main())

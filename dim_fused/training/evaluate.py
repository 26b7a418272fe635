"""Probes on frozen DIM features: ``python -m dim_fused.training.evaluate CHECKPOINT``.

For the global code Y, the last fc layer and the last conv layer (the paper's Y, fc and
conv features), of the trained encoder and of the same encoder at its random
initialisation, each scored on the dataset's held-out test split:

- ``linear``: a standardised multinomial logistic regression (L-BFGS, the L2 penalty of
  scikit-learn's default C = 1), fitted on the training split;
- ``nonlinear``: the paper's classifier (Tables 1 and 2; cortex_DIM's classifier): one
  200-unit hidden layer, Linear - Dropout(0.1) - BatchNorm - ReLU - Linear, Adam (lr 1e-4,
  betas 0.5/0.999, the official code's), on the training split;
- ``few_labels``: label efficiency, the linear probe fitted on 1 and on 10 labelled images
  per class (standardised with the statistics of the whole training split, which need no
  labels), the mean and spread over several random draws.

Everything runs in torch on the encoder's device (a GPU when there is one).
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as datasets
from .checkpoint import load_checkpoint, write_text_atomically
from .config import TrainConfig
from .models import Encoder, build_model

FEATURES: tuple[str, ...] = ("global", "fc", "conv")
SHOTS: tuple[int, ...] = (1, 10)


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


def _standardise(features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(features - mean) / scale in float64, in place in one copy (50000 CIFAR conv
    features are 1.6 GB of it)."""
    return features.to(torch.float64, copy=True).sub_(mean).div_(scale)


def _statistics(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training features' mean and standard deviation (1 where a feature is constant)."""
    std = train.std(0)
    return train.mean(0), torch.where(std > 1e-8, std, torch.ones_like(std))


def logistic_regression_accuracy(
    x: torch.Tensor, labels: torch.Tensor, x_test: torch.Tensor, test_labels: torch.Tensor, num_classes: int
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on float64 features, L2
    penalty 1 / (2 n) as scikit-learn's LogisticRegression(C=1), solved by L-BFGS."""
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")
    labels = labels.to(x.device)

    def objective():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight + bias, labels) + weight.pow(2).sum() / (2 * len(x))
        loss.backward()
        return loss

    optimizer.step(objective)
    with torch.no_grad():
        return _accuracy(x_test @ weight + bias, test_labels.to(x.device))


def linear_probe(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor, num_classes: int
) -> float:
    """Test accuracy of the logistic regression on features standardised with the
    training features' mean and standard deviation."""
    mean, scale = _statistics(train)
    x, x_test = _standardise(train, mean, scale), _standardise(test, mean, scale)
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


def nonlinear_probe(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    epochs: int,
    seed: int,
    batch_size: int = 64,
) -> float:
    """Test accuracy of the paper's classifier after `epochs` passes over the training
    features (the last epoch's model: no selection on the test split). Seeded: its
    initialisation, batch order and dropout follow `seed` alone."""
    with torch.random.fork_rng(devices=[train.device] if train.is_cuda else []):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        classifier = Classifier(train.shape[1], num_classes).to(train.device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-4, betas=(0.5, 0.999))
        labels = train_labels.to(train.device)
        classifier.train()
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=generator).to(train.device)
            for start in range(0, len(train), batch_size):
                batch = order[start : start + batch_size]
                if len(batch) < 2:  # BatchNorm needs two samples
                    continue
                loss = nn.functional.cross_entropy(classifier(train[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
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
) -> dict[str, float]:
    """Mean and standard deviation over `draws` of the linear probe's accuracy when fitted
    on `shots` random labelled images per class."""
    mean, scale = _statistics(train)  # of every training image: no labels needed
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
    return datasets.Split(train.images[keep], train.labels[keep])


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


def probe_encoder(
    encoder: Encoder,
    data: datasets.ImageData,
    device: torch.device,
    max_train: int,
    seed: int,
    classifier_epochs: int,
    draws: int = 5,
) -> dict[str, Any]:
    train = probe_subset(data.train, max_train, seed)
    fit = extract(encoder, train.images, data.crop, device)
    score = extract(encoder, data.test.images, data.crop, device)
    result: dict[str, Any] = {"linear": {}, "nonlinear": {}, "few_labels": {str(s): {} for s in SHOTS}}
    for name in FEATURES:
        args = (fit[name], train.labels, score[name], data.test.labels, data.num_classes)
        result["linear"][name] = linear_probe(*args)
        if classifier_epochs > 0:
            result["nonlinear"][name] = nonlinear_probe(*args, epochs=classifier_epochs, seed=seed)
        for shots in SHOTS:
            result["few_labels"][str(shots)][name] = few_label_probe(*args, shots=shots, draws=draws, seed=seed)
    return result


def evaluate(
    config: TrainConfig,
    model_state: dict[str, torch.Tensor],
    data: datasets.ImageData,
    device: torch.device,
    classifier_epochs: int = 100,
) -> dict:
    """The probes of the trained encoder (``model_state``) and of the same model at its
    initialisation (rebuilt from ``config.seed``), as {"trained": ..., "random": ...}.
    ValueError when the probes cannot do what they report (``check_probe_samples``)."""
    if classifier_epochs < 0:
        raise ValueError(f"--classifier-epochs {classifier_epochs}: give 0 (no nonlinear probe) or more")
    check_probe_samples(data, config.probe_samples, config.seed)
    untrained = build_model(config.model, config.seed).encoder.to(device)
    trained = build_model(config.model, config.seed)
    trained.load_state_dict(model_state)
    trained = trained.encoder.to(device)
    probe = {"max_train": config.probe_samples, "seed": config.seed, "classifier_epochs": classifier_epochs}
    return {
        "data": config.data,
        "test_images": len(data.test.labels),
        "probe": probe,
        "trained": probe_encoder(trained, data, device, config.probe_samples, config.seed, classifier_epochs),
        "random": probe_encoder(untrained, data, device, config.probe_samples, config.seed, classifier_epochs),
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"probes on {result['data']}'s test split ({result['test_images']} images): accuracy, trained / random encoder"
    )
    columns = ["linear", "nonlinear", *(f"{s} per class" for s in SHOTS)]
    print(f"{'features':<10}" + "".join(f"{c:>20}" for c in columns))
    for name in FEATURES:
        cells = []
        for kind in ("linear", "nonlinear"):
            trained, random = result["trained"][kind].get(name), result["random"][kind].get(name)
            cells.append("-" if trained is None else f"{trained:.4f} / {random:.4f}")
        for shots in SHOTS:
            trained, random = (result[e]["few_labels"][str(shots)][name]["mean"] for e in ("trained", "random"))
            cells.append(f"{trained:.4f} / {random:.4f}")
        print(f"{name:<10}" + "".join(f"{c:>20}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dim_fused.training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint.pt written by python -m dim_fused.training.train")
    parser.add_argument("--data-dir", help="override the dataset folder saved in the checkpoint")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--classifier-epochs", type=int, default=100, help="the nonlinear classifier's epochs (0: none)"
    )
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)

    # Everything that can be wrong is checked before the probes run (minutes on CIFAR).
    path = Path(args.checkpoint)
    try:
        if args.classifier_epochs < 0:
            raise ValueError(f"--classifier-epochs {args.classifier_epochs}: give 0 (no nonlinear probe) or more")
        device = _device(args.device)
        if args.json:
            _check_writable(Path(args.json))
        if not path.exists():
            raise ValueError(f"no checkpoint at {path}")
        state = load_checkpoint(path)  # CheckpointError: damaged, foreign or inconsistent
        config = TrainConfig(**state["config"])
        if args.data_dir:
            config.data_dir = args.data_dir
        data = datasets.load(config.data, config.data_dir)
        check_probe_samples(data, config.probe_samples, config.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        result = evaluate(config, state["model"], data, device, args.classifier_epochs)
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

"""Why Y's 1-label accuracy falls with two-view training: ``python one_label.py CHECKPOINT``.

For the checkpoint's encoder, the same model at its initialisation (the random encoder)
and the raw pixels: Y's 1-label-per-class accuracy under several few-label classifiers (20
seeded draws, the same images for every feature set), what the class means of *every*
training label reach (no sampling noise: how separable the classes are), and the shape of
Y's spectrum (how many directions carry its variance, before and after the probes'
per-dimension standardisation, and how much of it lies within classes and outside the
directions that separate them).
"""

import math
import sys

import torch

from dim_fused.training import data as datasets
from dim_fused.training import evaluate
from dim_fused.training.checkpoint import load_checkpoint
from dim_fused.training.config import TrainConfig
from dim_fused.training.models import build_model

DRAWS = 20


def draws(labels: torch.Tensor, classes: int, shots: int) -> list[torch.Tensor]:
    chosen = []
    for draw in range(DRAWS):
        generator = torch.Generator().manual_seed(17 * shots + draw)
        picks = []
        for label in range(classes):
            members = (labels == label).nonzero().squeeze(1)
            picks.append(members[torch.randperm(len(members), generator=generator)[:shots]])
        chosen.append(torch.cat(picks))
    return chosen


def nearest_mean(x: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, test_labels, classes: int) -> float:
    means = torch.stack([x[labels == c].mean(0) for c in range(classes)])
    distances = torch.cdist(test, means)
    return (distances.argmin(1) == test_labels).double().mean().item()


def cosine(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def participation_ratio(x: torch.Tensor) -> float:
    """(sum of eigenvalues)^2 / sum of squares: the number of directions that carry the
    variance (d for isotropic features, 1 for a line)."""
    eigenvalues = torch.linalg.eigvalsh(torch.cov(x.double().T)).clamp_min(0)
    return (eigenvalues.sum() ** 2 / (eigenvalues**2).sum()).item()


def variance_split(x: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[float, float, float]:
    """Of standardised features: the within-class variance (mean squared distance of an image
    to its class mean), its part inside the span of the class means (where it blurs the
    classes) and the between-class variance (of the class means)."""
    means = torch.stack([x[labels == c].mean(0) for c in range(classes)])
    residual = x - means[labels]
    within = (residual**2).sum(1).mean().item()
    span, _ = torch.linalg.qr(means.T)
    inside = ((residual @ span) ** 2).sum(1).mean().item()
    return within, inside, (means**2).sum(1).mean().item()


def report(name: str, train: torch.Tensor, test: torch.Tensor, data: datasets.ImageData) -> dict[str, float]:
    classes, labels, test_labels = data.num_classes, data.train.labels, data.test.labels
    mean, scale = evaluate._statistics(train)
    train_std, test_std = evaluate._standardise(train, mean, scale), evaluate._standardise(test, mean, scale)
    centred, test_centred = train.double() - mean.double(), test.double() - mean.double()
    rows = {
        "logistic, standardised (the probe)": [],
        "logistic, centred, not standardised": [],
        "nearest class mean, standardised": [],
        "nearest class mean, centred": [],
        "nearest class mean, centred, cosine": [],
    }
    for chosen in draws(labels, classes, 1):
        y = labels[chosen]
        rows["logistic, standardised (the probe)"].append(
            evaluate.logistic_regression_accuracy(train_std[chosen], y, test_std, test_labels, classes)
        )
        # the same penalty at the same overall scale: every dimension divided by one number
        overall = centred.std()
        rows["logistic, centred, not standardised"].append(
            evaluate.logistic_regression_accuracy(
                centred[chosen] / overall, y, test_centred / overall, test_labels, classes
            )
        )
        rows["nearest class mean, standardised"].append(
            nearest_mean(train_std[chosen], y, test_std, test_labels, classes)
        )
        rows["nearest class mean, centred"].append(nearest_mean(centred[chosen], y, test_centred, test_labels, classes))
        rows["nearest class mean, centred, cosine"].append(
            nearest_mean(cosine(centred[chosen]), y, cosine(test_centred), test_labels, classes)
        )
    result = {}
    for key, values in rows.items():
        average = sum(values) / len(values)
        spread = math.sqrt(sum((v - average) ** 2 for v in values) / (len(values) - 1))
        result[key] = (average, spread / math.sqrt(len(values)))
    every = nearest_mean(train_std, labels, test_std, test_labels, classes)
    print(f"\n## {name} ({train.shape[1]} features)\n")
    print("| 1 label per class, 20 draws | accuracy (standard error) |")
    print("|---|---:|")
    for key, (average, error) in result.items():
        print(f"| {key} | {average:.3f} ({error:.3f}) |")
    print(f"| nearest class mean of every training label, standardised | {every:.3f} |")
    print(
        f"\nparticipation ratio: centred {participation_ratio(centred):.1f}, standardised "
        f"{participation_ratio(train_std):.1f} (of {train.shape[1]})"
    )
    within, inside, between = variance_split(train_std, labels, classes)
    print(
        f"standardised variance (total {train.shape[1]}): within classes {within:.1f} ({inside:.1f} of it in "
        f"the span of the class means, {within - inside:.1f} outside it), between classes {between:.1f}"
    )
    return result


def main(path: str) -> None:
    data = datasets.load("fashion-mnist", "data")
    state = load_checkpoint(path)
    config = TrainConfig(**state["config"])
    cpu = torch.device("cpu")
    print(f"{path}: step {state['step']}, seed {config.seed}")
    for name in ("random", "trained"):
        model = build_model(config.model, config.seed)
        if name == "trained":
            model.load_state_dict(state["model"])
        train = evaluate.extract(model.encoder, data.train.images, data.crop, cpu)["global"]
        test = evaluate.extract(model.encoder, data.test.images, data.crop, cpu)["global"]
        report(f"Y, {name} encoder", train, test, data)
    pixels = [evaluate.pixels(split.images, data.crop, cpu) for split in (data.train, data.test)]
    report("raw pixels", *pixels, data)


if __name__ == "__main__":
    main(sys.argv[1])

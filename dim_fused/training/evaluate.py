"""Linear probes on frozen DIM features: ``python -m dim_fused.training.evaluate CHECKPOINT``.

A logistic regression is fitted on the features of the dataset's training split
(global code, last fc layer, last conv layer) and scored on its held-out test split,
for the trained encoder and for the same encoder at its random initialisation.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from . import data as datasets
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .models import Encoder, build_model

FEATURES: tuple[str, ...] = ("global", "fc", "conv")


@torch.no_grad()
def extract(
    encoder: Encoder, images: torch.Tensor, crop: int, device: torch.device, batch: int = 256
) -> dict[str, torch.Tensor]:
    """Frozen features (eval mode: BatchNorm running statistics) of uint8 images."""
    encoder.eval()
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in FEATURES}
    for start in range(0, len(images), batch):
        x = datasets.to_inputs(images[start : start + batch].to(device), crop)
        features = encoder(x)
        for name, value in zip(FEATURES, (features.code, features.fc, features.conv), strict=True):
            parts[name].append(value.flatten(1).float().cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


def linear_probe(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor, seed: int = 0
) -> float:
    """Test accuracy of a standardised multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train.double().numpy(), train_labels.numpy())
    return float(probe.score(test.double().numpy(), test_labels.numpy()))


def probe_encoder(
    encoder: Encoder, data: datasets.ImageData, device: torch.device, max_train: int, seed: int
) -> dict[str, float]:
    train = data.train
    if len(train.labels) > max_train:  # a fixed random subset keeps the CPU fit short
        keep = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[:max_train]
        train = datasets.Split(train.images[keep], train.labels[keep])
    fit = extract(encoder, train.images, data.crop, device)
    score = extract(encoder, data.test.images, data.crop, device)
    return {name: linear_probe(fit[name], train.labels, score[name], data.test.labels, seed) for name in FEATURES}


def evaluate(
    config: TrainConfig, model_state: dict[str, torch.Tensor], data: datasets.ImageData, device: torch.device
) -> dict:
    """Probe accuracies of the trained encoder (``model_state``) and of the same model
    at its initialisation (rebuilt from ``config.seed``), as {"trained": ..., "random": ...}."""
    untrained = build_model(config.model, config.seed).encoder.to(device)
    trained = build_model(config.model, config.seed)
    trained.load_state_dict(model_state)
    trained = trained.encoder.to(device)
    return {
        "data": config.data,
        "test_images": len(data.test.labels),
        "trained": probe_encoder(trained, data, device, config.probe_samples, config.seed),
        "random": probe_encoder(untrained, data, device, config.probe_samples, config.seed),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"linear probe, {result['data']} test split ({result['test_images']} images): accuracy")
    print(f"{'features':<10}{'trained':>10}{'random':>10}")
    for name in FEATURES:
        print(f"{name:<10}{result['trained'][name]:>10.4f}{result['random'][name]:>10.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dim_fused.training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint.pt written by python -m dim_fused.training.train")
    parser.add_argument("--data-dir", help="override the dataset folder saved in the checkpoint")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)

    path = Path(args.checkpoint)
    if not path.is_file():
        print(f"error: no checkpoint at {path}", file=sys.stderr)
        return 2
    try:
        state = load_checkpoint(path)
        config = TrainConfig(**state["config"])
    except (ValueError, TypeError) as error:  # CheckpointError: damaged or foreign; or a config it cannot read
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.data_dir:
        config.data_dir = args.data_dir
    try:
        data = datasets.load(config.data, config.data_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = evaluate(config, state["model"], data, torch.device(args.device))
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

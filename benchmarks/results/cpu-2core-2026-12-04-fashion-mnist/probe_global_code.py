"""The controls' probes of the global code Y: ``python probe_global_code.py CHECKPOINT...``.

For each Fashion-MNIST checkpoint: Y's linear probe on all training images and its linear
probe on 1 and 10 labels per class (5 seeded draws), of the trained encoder and, for the
first checkpoint, of the same model at its initialisation (the random encoder).
"""

import sys

import torch

from dim_fused.training import data as datasets
from dim_fused.training import evaluate
from dim_fused.training.checkpoint import load_checkpoint
from dim_fused.training.config import TrainConfig
from dim_fused.training.models import build_model


def probe_y(encoder: torch.nn.Module, data: datasets.ImageData) -> list[float]:
    cpu = torch.device("cpu")
    fit = evaluate.extract(encoder, data.train.images, data.crop, cpu)["global"]
    score = evaluate.extract(encoder, data.test.images, data.crop, cpu)["global"]
    args = (fit, data.train.labels, score, data.test.labels, data.num_classes)
    few = [evaluate.few_label_probe(*args, shots=s, draws=5, seed=0)["mean"] for s in evaluate.SHOTS]
    return [round(a, 4) for a in (evaluate.linear_probe(*args), *few)]


def main(paths: list[str]) -> None:
    data = datasets.load("fashion-mnist", "data")
    for index, path in enumerate(paths):
        state = load_checkpoint(path)
        config = TrainConfig(**state["config"])
        rows = {}
        for name in ("trained", "random") if index == 0 else ("trained",):
            model = build_model(config.model, config.seed)
            if name == "trained":
                model.load_state_dict(state["model"])
            rows[name] = probe_y(model.encoder, data)
        print(path, state["step"], "Y linear/1/10:", rows, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

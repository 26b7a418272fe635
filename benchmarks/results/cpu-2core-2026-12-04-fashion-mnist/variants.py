"""The short variants of views.md: ``python variants.py OUT STEPS [name=value ...]``.

Trains the demo's model (Fashion-MNIST, seed 0, 512-unit critics, lr 1e-3) for STEPS steps,
with any DIMConfig or TrainConfig field changed (``views=2``, ``alpha=0.5``,
``batch_size=256``), and prints the probes of its global code Y (linear on every training
image, 1 and 10 labels per class) with the training time. Extra names: ``schedule=cosine``
(the encoder's lr decays to 0 over STEPS), ``pad=P`` (images padded by P more pixels each
side: random crops shift up to 2 + P), ``probe_at=S1,S2`` (probe at these steps too).
"""

import json
import math
import sys
import time

import torch.nn.functional as F
from probe_global_code import probe_y

from dim_fused.training import DIMConfig, ImageData, TrainConfig, Trainer
from dim_fused.training import data as datasets


def typed(defaults: object, options: dict[str, str]) -> dict[str, object]:
    return {k: type(getattr(defaults, k))(v) for k, v in options.items()}


def main(out: str, steps: int, options: dict[str, str]) -> None:
    schedule = options.pop("schedule", "constant")
    pad = int(options.pop("pad", 0))
    probe_at = [int(s) for s in options.pop("probe_at", str(steps)).split(",")]
    model_fields = set(DIMConfig.__dataclass_fields__)
    model = typed(DIMConfig(), {k: v for k, v in options.items() if k in model_fields})
    run = typed(TrainConfig(DIMConfig()), {k: v for k, v in options.items() if k not in model_fields})
    model = DIMConfig(**{"units": 512, **model, "in_channels": 1})
    data, name = None, "fashion-mnist"
    if pad:
        full, name = datasets.load("fashion-mnist", "data"), "fashion-mnist-padded"
        train, test = (F.pad(split.images, (pad,) * 4).contiguous() for split in (full.train, full.test))
        data = ImageData.from_tensors(name, train, full.train.labels, test, full.test.labels)
    config = TrainConfig(model=model, data=name, steps=steps, **{"lr": 1e-3, "seed": 0, **run})
    trainer = Trainer(config, out, data=data)
    if schedule == "cosine":
        one_step = trainer.train_step

        def train_step(images):
            for group in trainer.encoder_optimizer.param_groups:
                group["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * trainer.step / steps))
            return one_step(images)

        trainer.train_step = train_step
    for stop in probe_at:
        start = time.time()
        trainer.config.steps = stop
        trainer.run(progress=False)
        seconds = time.time() - start
        linear, one, ten = probe_y(trainer.model.encoder, trainer.data)
        trainer.model.encoder.train()
        record = {"step": trainer.step, "train_s": round(seconds), "Y linear": linear, "Y 1": one, "Y 10": ten}
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), dict(a.split("=", 1) for a in sys.argv[3:]))

"""The no-augmentation control: ``python no_augmentation.py OUT``.

The demo's model (seed 0, 512-unit critics, lr 1e-3, gamma 0.1) trained on Fashion-MNIST's
centred 32x32 crops (crop = image size: no random crop, no flip), its global code Y probed
at steps 3,530 and 7,130 (linear on every training image, 1 and 10 labels per class).
"""

import json
import sys

from probe_global_code import probe_y

from dim_fused.training import DIMConfig, ImageData, TrainConfig, Trainer
from dim_fused.training import data as datasets


def centred(images):
    return images[..., 2:34, 2:34].contiguous()


def main(out: str) -> None:
    full = datasets.load("fashion-mnist", "data")
    train, test = full.train, full.test
    data = ImageData.from_tensors("fm-noaug", centred(train.images), train.labels, centred(test.images), test.labels)
    config = TrainConfig(model=DIMConfig(in_channels=1, units=512), data="fm-noaug", steps=10**7, lr=1e-3, seed=0)
    trainer = Trainer(config, out, data=data)
    for steps in (3530, 7130):
        trainer.config.steps = steps
        trainer.run(progress=False)
        linear, one, ten = probe_y(trainer.model.encoder, data)
        trainer.model.encoder.train()
        print(json.dumps({"step": trainer.step, "Y linear": linear, "Y 1": one, "Y 10": ten}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

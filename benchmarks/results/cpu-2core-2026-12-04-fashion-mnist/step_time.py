"""Step time of the 30-minute runs' model (two views, 512 units, seed 0) on "crop" and on
"strong" views: 3 interleaved blocks of 25 steps each in one process, the median step.
Run alone: .venv/bin/python benchmarks/results/cpu-2core-2026-12-04-fashion-mnist/step_time.py"""

import dataclasses
import tempfile
import time

from dim_fused.training import train
from dim_fused.training.trainer import Trainer

argv = ["--data", "fashion-mnist", "--units", "512", "--lr", "1e-3", "--views", "2", "--seed", "0"]
trainer = Trainer(train.config_from_args(train.parse_args(argv)), tempfile.mkdtemp(), device="cpu")
for block in range(3):
    for augment in ("crop", "strong"):
        trainer.config = dataclasses.replace(trainer.config, augment=augment)
        batches, times = trainer.batches(), []
        for _ in range(25):
            x = next(batches)
            start = time.perf_counter()
            trainer.train_step(x)
            times.append(time.perf_counter() - start)
            trainer.step += 1
        print(block, augment, f"median step {sorted(times)[12] * 1e3:.1f} ms")

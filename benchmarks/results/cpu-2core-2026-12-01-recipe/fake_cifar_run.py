"""Run a training CLI on a full-size CIFAR-10 stand-in (50000 + 10000 random images in the
official layout) to measure time per step and peak memory; checksums are patched out.

    python fake_cifar_run.py FOLDER train|evaluate ARGS...
"""

import importlib
import pickle
import sys
from pathlib import Path

import numpy as np
import torchvision

root = Path(sys.argv[1])
folder = root / "cifar-10-batches-py"
if not folder.exists():
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        images = rng.integers(0, 256, (10000, 3072), dtype=np.uint8)
        batch = {"data": images, "labels": [int(v) for v in rng.integers(0, 10, 10000)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
torchvision.datasets.CIFAR10._check_integrity = lambda self: True
torchvision.datasets.cifar.check_integrity = lambda path, md5=None: True
cli = importlib.import_module(f"dim_fused.training.{sys.argv[2]}")
sys.exit(cli.main(sys.argv[3:]))

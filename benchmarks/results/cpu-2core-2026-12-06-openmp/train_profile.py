"""Where a training step of the encode-and-dot critic spends its time: the convolutions of
three steps of one backend's trainer (default preset, fp32, batch 64, synthetic data), per
input shape, in ms a step.

    .venv/bin/python benchmarks/results/cpu-2core-2026-12-06-openmp/train_profile.py [cpu|reference]
"""

import sys

import torch

from dim_fused.training import DIMConfig, TrainConfig, Trainer

STEPS = 3


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    model = DIMConfig.preset("dim-local", critic="dot", backend=backend, estimator="infonce", units=2048)
    trainer = Trainer(TrainConfig(model=model, data="synthetic", batch_size=64, amp=False), "unused", device="cpu")
    batches = trainer.batches()
    for _ in range(2):
        trainer.train_step(next(batches))
    with torch.profiler.profile(record_shapes=True) as prof:
        for _ in range(STEPS):
            trainer.train_step(next(batches))
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / STEPS / 1e3
    print(f"{backend}: {total:.0f} ms a step (self CPU time)")
    convolutions = sorted((e for e in events if "convolution" in e.key), key=lambda e: -e.self_cpu_time_total)
    for e in convolutions[:8]:
        print(f"{e.key:28s} {e.self_cpu_time_total / STEPS / 1e3:7.1f} ms  {str(e.input_shapes)[:90]}")


if __name__ == "__main__":
    main()

"""Accuracy against training time: ``python -m benchmarks.time_to_accuracy --budget 30m
--every 5m --out FOLDER [any option of dim_fused.training.train]``.

Trains DIM as ``python -m dim_fused.training.train`` would with the same options (its run
folder is ``FOLDER/run``), pausing after every ``--every`` of training time to probe the
trained encoder: the linear probe of the global code Y and of the conv features on every
training image, and Y's linear probe on 1 and 10 labelled images per class. The first
point, at 0 s, is the encoder at its initialisation (the random encoder). The probes' own
time is not counted as training time. At the end, the full probes (trained, random and raw
pixels, with the nonlinear classifier) as the training command's. Writes
``FOLDER/curve.json`` (the command, the processor, every point), ``curve.png``,
``probe.json``, ``probes.png`` and the run's own files.
"""

import argparse
import dataclasses
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from dim_fused.training import evaluate, train
from dim_fused.training.plots import plot_probes
from dim_fused.training.trainer import Trainer

from .report import cpu_model

# A point's probes: (name, feature layer, labelled images per class; None: every training image).
POINT_PROBES = (
    ("Y linear", "global", None),
    ("conv linear", "conv", None),
    ("Y 1 per class", "global", 1),
    ("Y 10 per class", "global", 10),
)


def probe_point(trainer: Trainer) -> dict[str, float]:
    """The curve's probes of the trainer's encoder now (eval mode, then back to training)."""
    data, config = trainer.data, trainer.config
    train_split = evaluate.probe_subset(data.train, config.probe_samples, config.seed)
    encoder = trainer.model.encoder
    fit = evaluate.extract(encoder, train_split.images, data.crop, trainer.device)
    score = evaluate.extract(encoder, data.test.images, data.crop, trainer.device)
    encoder.train()
    point = {}
    for name, layer, shots in POINT_PROBES:
        args = (fit[layer], train_split.labels, score[layer], data.test.labels, data.num_classes)
        if shots is None:
            point[name] = evaluate.linear_probe(*args)
        else:
            point[name] = evaluate.few_label_probe(*args, shots=shots, draws=5, seed=config.seed)["mean"]
    return point


def plot_curve(points: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [p["train_s"] / 60 for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, _, _) in enumerate(POINT_PROBES):
        ax.plot(minutes, [p[name] for p in points], marker="o", color=f"C{i}", label=name)
        ax.axhline(points[0][name], color=f"C{i}", linestyle=":", alpha=0.6)
    ax.set(title=title, xlabel="training time (minutes; the dotted lines: the random encoder)", ylabel="test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.time_to_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=train._seconds, required=True, help="training time in all (600, 90s, 30m)")
    parser.add_argument("--every", type=train._seconds, required=True, help="training time between probe points")
    parser.add_argument("--out", type=Path, required=True, help="the results' folder (the run goes to OUT/run)")
    ours, rest = parser.parse_known_args(argv)
    args = train.parse_args([*rest, "--out", str(ours.out / "run")])
    if "steps" not in vars(args) and args.epochs is None:
        args.steps = 10**7  # the budget ends the run
    config = train.config_from_args(args)
    trainer = Trainer(config, ours.out / "run", device=args.device)
    evaluate.check_probe_samples(trainer.data, config.probe_samples, config.seed)
    command = "python -m benchmarks.time_to_accuracy " + shlex.join(argv)
    title = f"{config.data}, seed {config.seed}: test accuracy against training time"
    points = [{"train_s": 0.0, "step": 0, "epoch": 0.0, **probe_point(trainer)}]
    print(json.dumps(points[-1]), flush=True)
    trained_s = 0.0
    while trained_s < ours.budget and trainer.step < config.steps:
        start = time.monotonic()
        trainer.run(progress=False, time_budget=min(ours.every, ours.budget - trained_s))
        trained_s += time.monotonic() - start
        epoch = trainer.step / trainer.steps_per_epoch
        points.append({"train_s": trained_s, "step": trainer.step, "epoch": epoch, **probe_point(trainer)})
        print(json.dumps(points[-1]), flush=True)
        result = {
            "command": command,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu_model": cpu_model(),
            "cpu_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "config": dataclasses.asdict(trainer.config),
            "points": points,
        }
        (ours.out / "curve.json").write_text(json.dumps(result, indent=1) + "\n")
        plot_curve(points, title, ours.out / "curve.png")
    state = trainer.model.state_dict()
    probe = evaluate.evaluate(config, state, trainer.data, trainer.device, args.classifier_epochs, progress=False)
    evaluate.print_table(probe)
    (ours.out / "probe.json").write_text(json.dumps(probe, indent=2) + "\n")
    plot_probes(probe, ours.out / "probes.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A run's pictures: its training curves, and its probes' label efficiency."""

from pathlib import Path
from typing import Any

from .checkpoint import write_atomically


def plot(records: list[dict[str, Any]], probe: dict[str, Any] | None, path: Path) -> None:
    """Loss, MI estimates and accuracies against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records if "step" in r]
    rows = [r for r in records if "step" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, [r["loss"] for r in rows])
    axes[0].set(title="encoder loss", xlabel="step")
    for key in ("local_mi", "global_mi"):
        if any(r[key] for r in rows):
            axes[1].plot(steps, [r[key] for r in rows], label=key)
    axes[1].set(title="MI estimates (higher = more MI)", xlabel="step")
    axes[1].legend()
    if rows and "prior_accuracy" in rows[0]:
        axes[2].plot(steps, [r["prior_accuracy"] for r in rows], label="prior discriminator")
    if probe:
        for i, (name, accuracy) in enumerate(probe["trained"]["linear"].items()):
            axes[2].axhline(accuracy, linestyle="--", color=f"C{i + 1}", label=f"linear probe {name}: {accuracy:.3f}")
        untrained = probe["random"]["linear"]["global"]
        axes[2].axhline(untrained, linestyle=":", color="C1", label=f"linear probe global, random: {untrained:.3f}")
    axes[2].set(title="accuracy", xlabel="step", ylim=(0, 1.02))
    if axes[2].get_legend_handles_labels()[0]:  # no prior (gamma 0) and no probe: nothing to name
        axes[2].legend(fontsize="small")
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


# The label-efficiency plot's lines: (result key, layer, legend label, matplotlib style).
_PROBE_LINES = (
    ("trained", "global", "DIM, global code Y", {"color": "C0", "marker": "o"}),
    ("trained", "conv", "DIM, conv features", {"color": "C0", "marker": "s", "linestyle": "--"}),
    ("random", "global", "random encoder, Y", {"color": "C1", "marker": "o"}),
    ("random", "conv", "random encoder, conv", {"color": "C1", "marker": "s", "linestyle": "--"}),
    ("pixels", "pixels", "raw pixels", {"color": "C2", "marker": "^"}),
)


def plot_probes(probe: dict[str, Any], path: Path) -> None:
    """Label efficiency at a glance: the linear probe's test accuracy against the labelled
    images per class (1, 10 and every training image), for the trained encoder, the
    random one and the raw pixels; the bars are the draws' standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted(int(s) for s in probe["trained"]["few_labels"])
    every = probe["probe"]["train_images"] / probe["classes"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for encoder, layer, label, style in _PROBE_LINES:
        if encoder not in probe or layer not in probe[encoder]["linear"]:
            continue
        few = [probe[encoder]["few_labels"][str(s)][layer] for s in shots]
        means = [f["mean"] for f in few] + [probe[encoder]["linear"][layer]]
        spreads = [f["std"] for f in few] + [0.0]
        ax.errorbar([*shots, every], means, yerr=spreads, label=label, capsize=3, **style)
    ax.set_xscale("log")
    ax.set_xticks([*shots, every], [*map(str, shots), f"all\n({every:.0f})"])
    ax.minorticks_off()
    ax.set(
        title=f"{probe['data']}: linear probe vs labels per class",
        xlabel="labelled training images per class",
        ylabel=f"test accuracy ({probe['test_images']} images)",
        ylim=(0, 1),
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)

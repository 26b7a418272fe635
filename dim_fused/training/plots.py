"""The training curves of a run, as a PNG."""

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
    axes[2].legend(fontsize="small")
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)

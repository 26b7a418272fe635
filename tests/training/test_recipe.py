"""The README's reproduction recipe: its exact command lines, two steps each, on
CIFAR-shaped files in the official layout (the real data never leaves the user's disk)."""

import json
import re
import shlex
from pathlib import Path

import pytest
import torchvision

from dim_fused.training import train

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "python -m dim_fused.training.train "


def recipe_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Reproducing the paper's CIFAR-10 DIM(L) rows", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line.removeprefix(PREFIX)) for line in block.splitlines() if line.startswith(PREFIX)]


def short(argv: list[str], data_dir: Path, out: Path) -> list[str]:
    """The recipe's command with two steps instead of 1000 epochs, local folders, and a
    one-epoch classifier."""
    values = dict(zip(argv, argv[1:], strict=False))
    assert values["--data"] == "cifar10" and values["--epochs"] == "1000" and values["--batch-size"] == "64"
    replaced = {"--epochs": ["--steps", "2"], "--data-dir": ["--data-dir", str(data_dir)], "--out": ["--out", str(out)]}
    result, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in replaced:
            result += replaced[arg]
            skip = True
        else:
            result.append(arg)
    return [*result, "--classifier-epochs", "1", "--no-progress"]


def test_the_readme_gives_the_three_paper_rows():
    commands = recipe_commands()
    assert len(commands) == 3
    estimators = [dict(zip(c, c[1:], strict=False)).get("--estimator") for c in commands]
    assert estimators == ["infonce", "jsd", "infonce"]
    assert "--download" in commands[0]


@pytest.mark.parametrize("row", [0, 1, 2], ids=["dim-l-nce", "dim-l-jsd", "dim-g"])
def test_the_recipe_runs_on_cifar_shaped_data(tmp_path, monkeypatch, row):
    from test_data import write_fake_cifar10

    # 100 training images (10 of each class: what the 10-labels-per-class probe needs), 20 test images
    write_fake_cifar10(tmp_path, monkeypatch, per_batch=20, test=20)

    def no_network(*args, **kwargs):
        raise AssertionError("the recipe's test must not download")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", no_network)
    out = tmp_path / "run"
    assert train.main(short(recipe_commands()[row], tmp_path, out)) == 0
    probe = json.loads((out / "probe.json").read_text())
    for encoder in ("trained", "random"):
        for kind in ("linear", "nonlinear"):
            assert set(probe[encoder][kind]) == {"global", "fc", "conv"}
            assert all(0.0 <= a <= 1.0 for a in probe[encoder][kind].values())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-2]["step"] == 2

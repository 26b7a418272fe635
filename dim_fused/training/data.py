"""Image datasets for the trainer, held in memory as uint8 tensors.

``digits`` is built in (scikit-learn's bundled 8x8 handwritten digits, upscaled to
32x32): no download, no folder. ``cifar10``, ``cifar100`` and ``stl10`` are read
through torchvision from a local folder in their standard formats; nothing is
downloaded unless asked for (``download``: torchvision fetches and checksums the
archives). ``synthetic`` is random CIFAR-sized images, for timing only.
"""

import dataclasses
import os
import pickle
import socket
import sys
from typing import NamedTuple

import torch
import torch.nn.functional as F

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "stl10", "synthetic")
# Images DIM trains on (an epoch): digits' fixed training split, CIFAR's training sets,
# STL-10's unlabeled split, the synthetic set.
TRAINING_IMAGES: dict[str, int] = {
    "digits": 1347,
    "cifar10": 50000,
    "cifar100": 50000,
    "stl10": 100000,
    "synthetic": 4096,
}

# What each torchvision dataset expects under the data folder, for the error message.
_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py/ (data_batch_1 .. data_batch_5, test_batch, batches.meta), the folder inside "
        "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"
    ),
    "cifar100": (
        "cifar-100-python/ (train, test, meta), the folder inside cifar-100-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html"
    ),
    "stl10": (
        "stl10_binary/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin, class_names.txt), "
        "the folder inside stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/"
    ),
}


class Split(NamedTuple):
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)


@dataclasses.dataclass
class ImageData:
    """``unlabeled`` trains DIM; the linear probe fits on ``train`` and is scored on
    ``test``. Training images are randomly cropped to ``crop`` and flipped, probe
    images centre-cropped, when ``crop`` is smaller than the images."""

    name: str
    unlabeled: Split
    train: Split
    test: Split
    num_classes: int
    crop: int

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]


def load(name: str, root: str | os.PathLike = "data") -> ImageData:
    """The dataset ``name`` (one of DATASETS); ``root`` is the folder holding the
    torchvision datasets (unused for digits and synthetic)."""
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return _synthetic()
    if name in _LAYOUT:
        return _torchvision(name, os.fspath(root))
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")


def _digits() -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.from_numpy(digits.images).float()[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    images = F.interpolate(small, size=32, mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(digits.target).long()
    train, test = train_test_split(torch.arange(len(labels)), test_size=0.25, random_state=0, stratify=labels)
    train_split = Split(images[train], labels[train])
    return ImageData("digits", train_split, train_split, Split(images[test], labels[test]), 10, 32)


def _synthetic() -> ImageData:
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
        return Split(images, torch.randint(0, 10, (n,), generator=generator))

    train = split(4096)
    return ImageData("synthetic", train, train, split(1024), 10, 32)


# Seconds a download waits on one network operation (connect, one read) before giving up:
# a network that never answers fails in bounded time. DIM_FUSED_DOWNLOAD_TIMEOUT overrides it.
DOWNLOAD_TIMEOUT_S = 60.0


def download(name: str, root: str | os.PathLike, timeout: float | None = None) -> None:
    """Let torchvision fetch ``name``'s archives into ``root`` and check their MD5 sums
    (a no-op for what is already there; digits and synthetic need nothing). Every network
    operation times out after ``timeout`` seconds (default: $DIM_FUSED_DOWNLOAD_TIMEOUT,
    else DOWNLOAD_TIMEOUT_S); a network error or time-out raises OSError naming the URL."""
    if name not in _LAYOUT:
        return
    import torchvision

    if timeout is None:
        raw = os.environ.get("DIM_FUSED_DOWNLOAD_TIMEOUT", str(DOWNLOAD_TIMEOUT_S))
        try:
            timeout = float(raw)
        except ValueError:
            raise ValueError(f"DIM_FUSED_DOWNLOAD_TIMEOUT={raw!r} is not a number of seconds") from None
    if not timeout > 0:
        raise ValueError(f"the download time-out must be a positive number of seconds, got {timeout}")
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    if name == "stl10":
        cls, splits = torchvision.datasets.STL10, [{"split": "train+unlabeled"}, {"split": "test"}]
    else:
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        splits = [{"train": True}]
    url = getattr(cls, "url", "torchvision's source")
    print(f"--download: {name} from {url} into {root}, unless already there", file=sys.stderr)
    # torchvision's urlopen calls take no time-out of their own: the socket default bounds them.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        for split in splits:
            cls(root, download=True, **split)
    except OSError as error:  # URLError, TimeoutError, a refused connection, a DNS failure
        raise OSError(f"fetching {url} failed: {error} (time-out: {timeout:g} s per network operation)") from error
    finally:
        socket.setdefaulttimeout(previous)


def _torchvision(name: str, root: str) -> ImageData:
    import torchvision

    where = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"{name}: data folder {where} does not exist. Put {_LAYOUT[name]} into it, "
            "pass --data-dir, or --download to let torchvision fetch it."
        )

    def read(split: str) -> Split:
        try:
            if name == "stl10":
                ds = torchvision.datasets.STL10(root, split=split, download=False)
                return Split(torch.from_numpy(ds.data), torch.as_tensor(ds.labels).long())
            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            ds = cls(root, train=split == "train", download=False)
            return Split(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets))
        except (RuntimeError, OSError, ValueError, EOFError, KeyError, pickle.UnpicklingError) as error:
            raise FileNotFoundError(
                f"{name} ({split} split) is missing or malformed under {where}: expected {_LAYOUT[name]} "
                f"(--download lets torchvision fetch it). ({type(error).__name__}: {error})"
            ) from error

    train, test = read("train"), read("test")
    if name == "stl10":  # DIM trains on the 100k unlabeled images, 64x64 crops (as the paper)
        return ImageData(name, read("unlabeled"), train, test, 10, 64)
    return ImageData(name, train, train, test, 10 if name == "cifar10" else 100, 32)


def to_inputs(images: torch.Tensor, crop: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [-1, 1], cropped to ``crop`` x ``crop``: at
    random positions with random horizontal flips when ``generator`` is given
    (training) and the images are larger than ``crop``, else centred."""
    x = images.float().div_(127.5).sub_(1.0)
    height, width = x.shape[-2:]
    if crop > min(height, width):
        raise ValueError(f"crop {crop} is larger than the images ({height}x{width})")
    if generator is None or height == width == crop:
        top, left = (height - crop) // 2, (width - crop) // 2
        return x[..., top : top + crop, left : left + crop]
    batch, device = x.shape[0], x.device
    top = torch.randint(0, height - crop + 1, (batch, 1, 1), generator=generator, device=device)
    left = torch.randint(0, width - crop + 1, (batch, 1, 1), generator=generator, device=device)
    flip = torch.rand(batch, 1, 1, generator=generator, device=device) < 0.5
    steps = torch.arange(crop, device=device)
    rows = (top + steps[None, :, None]).expand(batch, crop, crop)
    cols = (left + torch.where(flip, crop - 1 - steps, steps)).expand(batch, crop, crop)
    index = torch.arange(batch, device=device)[:, None, None]
    return x.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2).contiguous()

"""Image datasets for the trainer, as uint8 images (held in memory, or read from their
files batch by batch when a folder of images does not fit).

``digits`` is built in (scikit-learn's bundled 8x8 handwritten digits, upscaled to
32x32): no download, no folder. ``fashion-mnist`` is read from its four idx files (Debian's
``dataset-fashion-mnist`` package installs them; torchvision's ``FashionMNIST/raw/`` layout
under the data folder works too). ``cifar10``, ``cifar100`` and ``stl10`` are read through
torchvision from a local folder in their standard formats; nothing is downloaded unless
asked for (``download``: torchvision fetches and checksums the archives). ``folder`` is
the user's own images (``train/`` and ``test/`` of class folders, optionally
``unlabeled/``). ``synthetic`` is random CIFAR-sized images, for timing only. Any other
data reaches the trainer as an ``ImageData`` (``ImageData.from_tensors``).
"""

import dataclasses
import gzip
import math
import os
import pickle
import socket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "cifar10", "cifar100", "stl10", "folder", "synthetic")
# Images DIM trains on (an epoch): digits' fixed training split, Fashion-MNIST's and CIFAR's
# training sets, STL-10's unlabeled split, the synthetic set (a folder's: counted, see
# training_images).
TRAINING_IMAGES: dict[str, int] = {
    "digits": 1347,
    "fashion-mnist": 60000,
    "cifar10": 50000,
    "cifar100": 50000,
    "stl10": 100000,
    "synthetic": 4096,
}
# Image channels of each built-in dataset (3 unless listed; a folder's images are read as RGB).
GRAYSCALE: tuple[str, ...] = ("digits", "fashion-mnist")

# How training draws each image's view (to_inputs): "crop", a random crop and flip (the
# paper's); "strong", also a random zoom, contrast and brightness (what a label-efficient
# code must be invariant to: benchmarks/results/cpu-2core-2026-12-04-fashion-mnist/controls.md).
AUGMENTATIONS: tuple[str, ...] = ("crop", "strong")

# Where Debian's dataset-fashion-mnist package puts the four idx files.
FASHION_MNIST_PACKAGE = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# A folder's images are held in memory up to this many bytes, else read batch by batch.
IN_MEMORY_BYTES = 4 << 30

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


class ImageFiles:
    """Images read from their files when indexed, as uint8 (n, C, size, size) like an
    in-memory tensor (``images[indices]``, ``images[a:b]``, ``len``, ``shape``): a folder
    too large for memory. ``take(indices)`` is a smaller ImageFiles, still unread."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths, self.size = list(paths), size

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 3, self.size, self.size))

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, indices: torch.Tensor) -> "ImageFiles":
        return ImageFiles([self.paths[i] for i in indices.tolist()], self.size)

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        chosen = self.paths[index] if isinstance(index, slice) else [self.paths[i] for i in index.tolist()]
        return torch.stack([read_image(path, self.size) for path in chosen])


class Split(NamedTuple):
    images: torch.Tensor | ImageFiles  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def take(self, indices: torch.Tensor) -> "Split":
        """The images and labels at ``indices`` (a folder read from files stays unread)."""
        images = self.images.take(indices) if isinstance(self.images, ImageFiles) else self.images[indices]
        return Split(images, self.labels[indices])


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

    @classmethod
    def from_tensors(
        cls,
        name: str,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        test_images: torch.Tensor,
        test_labels: torch.Tensor,
        *,
        unlabeled_images: torch.Tensor | None = None,
        crop: int = 32,
    ) -> "ImageData":
        """Any labelled image data for ``Trainer(config, out, data=...)`` and the probes:
        uint8 images (N, C, H, W) with H, W >= ``crop`` (the encoder's input: 32 for
        basic32x32, 64 for alex64x64) and int64 labels 0..K-1. DIM trains on
        ``unlabeled_images`` when given, else on the training images; larger images are
        cropped at random (and flipped) in training, centred for the probes."""
        splits = {}
        for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
            if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4):
                raise ValueError(f"{split}_images must be a uint8 tensor (N, C, H, W)")
            if min(images.shape[-2:]) < crop:
                raise ValueError(f"{split}_images are {tuple(images.shape[-2:])} pixels, smaller than crop {crop}")
            labels = torch.as_tensor(labels)
            if labels.shape != (len(images),) or labels.dtype.is_floating_point or labels.min() < 0:
                raise ValueError(f"{split}_labels must hold one non-negative integer class per image")
            splits[split] = Split(images, labels.long())
        if train_images.shape[1:] != test_images.shape[1:]:
            raise ValueError(f"train and test images differ in shape: {train_images.shape} vs {test_images.shape}")
        unlabeled = splits["train"]
        if unlabeled_images is not None:
            if unlabeled_images.dtype != torch.uint8 or unlabeled_images.shape[1:] != train_images.shape[1:]:
                raise ValueError("unlabeled_images must be uint8 images shaped like the training images")
            unlabeled = Split(unlabeled_images, torch.full((len(unlabeled_images),), -1, dtype=torch.long))
        num_classes = int(max(splits["train"].labels.max(), splits["test"].labels.max())) + 1
        return cls(name, unlabeled, splits["train"], splits["test"], num_classes, crop)


def load(name: str, root: str | os.PathLike = "data", image_size: int = 32) -> ImageData:
    """The dataset ``name`` (one of DATASETS); ``root`` is the folder holding it (unused
    for digits and synthetic); ``image_size`` the encoder's input (a folder's images are
    resized to it)."""
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return _synthetic()
    if name == "fashion-mnist":
        return _fashion_mnist(Path(root))
    if name == "folder":
        return _folder(Path(root), image_size)
    if name in _LAYOUT:
        return _torchvision(name, os.fspath(root))
    raise ValueError(
        f"dataset must be one of {', '.join(DATASETS)}; got {name!r} (other data: pass an ImageData, "
        "dim_fused.training.ImageData.from_tensors, to Trainer(config, out, data=...))"
    )


def training_images(name: str, root: str | os.PathLike = "data") -> int:
    """How many images one epoch of DIM training goes through (a folder's are counted)."""
    if name == "folder":
        root = Path(root)
        return len(_image_paths(root / "unlabeled" if (root / "unlabeled").is_dir() else root / "train"))
    if name not in TRAINING_IMAGES:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    return TRAINING_IMAGES[name]


def channels(name: str) -> int:
    return 1 if name in GRAYSCALE else 3


# ---- Fashion-MNIST: four idx files ---------------------------------------------------------------------------------
def read_idx(path: Path) -> torch.Tensor:
    """An idx file of unsigned bytes (gzipped when its name ends in .gz) as a uint8 tensor
    of the dimensions its header gives; ValueError for anything else (no pickle, no code)."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        raw = file.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    dims = raw[3]
    if len(raw) < 4 + 4 * dims:
        raise ValueError(f"{path}: its header is cut short")
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    body = raw[4 + 4 * dims :]
    if len(body) != math.prod(shape):
        raise ValueError(f"{path}: {len(body)} bytes of data for a {shape} array")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _fashion_mnist_folder(root: Path) -> Path:
    """The first folder holding all four idx files (gzipped or not): torchvision's layout
    under ``root``, then Debian's package."""
    candidates = [root / "FashionMNIST" / "raw", FASHION_MNIST_PACKAGE]
    for folder in candidates:
        names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
        if all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in names):
            return folder
    raise FileNotFoundError(
        f"fashion-mnist: its four idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        f"t10k-labels-idx1-ubyte, gzipped or not) are in neither {candidates[0]} nor {FASHION_MNIST_PACKAGE}. "
        "Install Debian's package (apt-get install dataset-fashion-mnist), put the files into "
        f"{candidates[0]}, or pass --download to let torchvision fetch them."
    )


def _fashion_mnist(root: Path) -> ImageData:
    folder = _fashion_mnist_folder(root)

    def read(name: str) -> torch.Tensor:
        path = folder / name
        return read_idx(path if path.is_file() else folder / f"{name}.gz")

    def split(which: str) -> Split:
        images_name, labels_name = FASHION_MNIST_FILES[which]
        images, labels = read(images_name), read(labels_name)
        if images.dim() != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"fashion-mnist in {folder}: {images_name} and {labels_name} do not match")
        # 28x28 -> 36x36 (zeros, the images' background): training takes random 32x32 crops
        # (shifts of up to 2 pixels each way) and flips, the probes the centre (2-pixel margin).
        return Split(F.pad(images, (4, 4, 4, 4))[:, None].contiguous(), labels.long())

    train = split("train")
    return ImageData("fashion-mnist", train, train, split("test"), 10, 32)


# ---- a folder of the user's images ---------------------------------------------------------------------------------
def _image_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image(path: Path, size: int) -> torch.Tensor:
    """An image file as uint8 RGB (3, size, size): its shorter side resized to ``size``,
    the centre kept."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.reshape(size, size, 3).permute(2, 0, 1).contiguous()


def _folder(root: Path, crop: int) -> ImageData:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (the classes: train's folder
    names, sorted), and unlabeled images anywhere under ``root/unlabeled/`` if present.
    Stored at ``crop + crop // 8`` pixels (random crops of ``crop`` in training)."""
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise FileNotFoundError(
            f"folder: {root.resolve()} must hold train/ and test/, each with one folder of images per class "
            "(and optionally unlabeled/ for DIM training), as torchvision's ImageFolder"
        )
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"folder: {root / 'train'} has no class folders")
    stranger = sorted({p.name for p in (root / "test").iterdir() if p.is_dir()} - set(classes))
    if stranger:
        raise ValueError(f"folder: test/ has classes that train/ lacks: {', '.join(stranger)}")
    size = crop + crop // 8
    every = {}
    for split in ("train", "test"):
        paths, labels = [], []
        for label, name in enumerate(classes):
            found = _image_paths(root / split / name) if (root / split / name).is_dir() else []
            paths += found
            labels += [label] * len(found)
        if not paths:
            raise FileNotFoundError(f"folder: no images ({', '.join(IMAGE_SUFFIXES)}) under {root / split}")
        every[split] = (paths, torch.tensor(labels, dtype=torch.long))
    if (root / "unlabeled").is_dir():
        paths = _image_paths(root / "unlabeled")
        every["unlabeled"] = (paths, torch.full((len(paths),), -1, dtype=torch.long))
    in_memory = sum(len(p) for p, _ in every.values()) * 3 * size * size <= IN_MEMORY_BYTES

    def split(name: str) -> Split:
        paths, labels = every[name]
        files = ImageFiles(paths, size)
        return Split(files[:] if in_memory else files, labels)

    train = split("train")
    unlabeled = split("unlabeled") if "unlabeled" in every and every["unlabeled"][0] else train
    return ImageData("folder", unlabeled, train, split("test"), len(classes), crop)


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
    if name not in _LAYOUT and name != "fashion-mnist":
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
    elif name == "fashion-mnist":  # into root/FashionMNIST/raw/, where load looks first
        cls, splits = torchvision.datasets.FashionMNIST, [{"train": True}, {"train": False}]
    else:
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        splits = [{"train": True}]
    url = getattr(cls, "url", None) or (getattr(cls, "mirrors", None) or ["torchvision's source"])[0]
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


def to_inputs(
    images: torch.Tensor, crop: int, generator: torch.Generator | None = None, augment: str = "crop"
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [-1, 1], cropped to ``crop`` x ``crop``. Training
    (``generator`` given) draws each image's view by ``augment`` (see AUGMENTATIONS): "crop",
    a random position with a random horizontal flip when the images are larger than
    ``crop``; "strong", a random zoom and position, a flip, and a random contrast and
    brightness. The probes (no generator) read the centred crop."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    x = images.float().div_(127.5).sub_(1.0)
    height, width = x.shape[-2:]
    if crop > min(height, width):
        raise ValueError(f"crop {crop} is larger than the images ({height}x{width})")
    if generator is not None and augment == "strong":
        return _strong_view(x, crop, generator)
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


def _strong_view(x: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """x in [-1, 1] (B, C, H, W) -> a random view (B, C, crop, crop): a square of crop / z
    pixels a side (z uniform in [1, 1.35]: the crop zoomed in up to 1.35x) at a uniform
    position inside the image, resampled bilinearly, flipped with probability 1/2; then the contrast scaled
    about the view's mean by [0.6, 1.4] and the brightness shifted by [-0.25, 0.25]."""
    batch, device = x.shape[0], x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, device=device)

    # affine_grid's units: the image spans [-1, 1]; the view (crop / z pixels a side) as a
    # fraction of each of its sides.
    zoom = uniform(1.0, 1.35)
    scale_x, scale_y = crop / (zoom * x.shape[-1]), crop / (zoom * x.shape[-2])
    shift_x, shift_y = (1 - scale_x) * uniform(-1.0, 1.0), (1 - scale_y) * uniform(-1.0, 1.0)
    flip = torch.where(torch.rand(batch, generator=generator, device=device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 1, 1] = scale_x * flip, scale_y
    theta[:, 0, 2], theta[:, 1, 2] = shift_x, shift_y
    grid = F.affine_grid(theta, [batch, x.shape[1], crop, crop], align_corners=False)
    view = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    mean = view.mean(dim=(1, 2, 3), keepdim=True)
    contrast, brightness = uniform(0.6, 1.4).view(-1, 1, 1, 1), uniform(-0.25, 0.25).view(-1, 1, 1, 1)
    return ((view - mean) * contrast + mean + brightness).clamp_(-1.0, 1.0)

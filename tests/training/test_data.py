"""Datasets: the built-in digits, torchvision folders (never downloaded), crops."""

import pickle

import numpy as np
import pytest
import torch

from dim_fused.training import data


def test_digits_are_built_in_and_split():
    digits = data.load("digits")
    assert digits.train.images.shape == (1347, 1, 32, 32) and digits.test.images.shape == (450, 1, 32, 32)
    assert digits.train.images.dtype == torch.uint8 and digits.train.images.max() > 200
    assert digits.unlabeled is digits.train and digits.num_classes == 10 and digits.crop == 32
    assert set(digits.test.labels.tolist()) == set(range(10))
    assert torch.equal(data.load("digits").test.images, digits.test.images)  # a fixed split


@pytest.mark.parametrize(
    "name, expected", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("stl10", "stl10_binary")]
)
def test_missing_or_malformed_folders_say_what_is_expected(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError, match=f"does not exist.*{expected}.*--download to let torchvision"):
        data.load(name, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"missing or malformed.*{expected}.*--download lets torchvision"):
        data.load(name, tmp_path)  # exists, but empty
    assert list(tmp_path.iterdir()) == []  # and nothing was fetched into it


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_download_is_opt_in_and_checksummed_by_torchvision(tmp_path, name, monkeypatch):
    """--download hands the fetch to torchvision (which checks the archives' MD5 sums);
    without it, loading never asks torchvision to download."""
    import torchvision

    calls = []

    class Recorder:
        def __init__(self, root, *args, download=False, **kwargs):
            calls.append((root, download, kwargs.get("split", kwargs.get("train"))))
            raise RuntimeError("Dataset not found")  # as torchvision says when nothing is there

    for cls in ("CIFAR10", "CIFAR100", "STL10"):
        monkeypatch.setattr(torchvision.datasets, cls, Recorder)
    with pytest.raises(FileNotFoundError):
        data.load(name, tmp_path)
    assert calls and not any(download for _, download, _ in calls)
    calls.clear()
    with pytest.raises(RuntimeError, match="Dataset not found"):
        data.download(name, tmp_path / "fresh")
    assert calls[0] == (str(tmp_path / "fresh"), True, "train+unlabeled" if name == "stl10" else True)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset must be one of digits, cifar10, cifar100, stl10, synthetic"):
        data.load("mnist")


def write_fake_cifar10(root, monkeypatch, per_batch: int = 3, test: int = 4) -> None:
    """cifar-10-batches-py/ in the official layout: five pickled training batches, a test
    batch and batches.meta, each batch {"data": uint8 (n, 3072) channel planes, "labels"}."""
    import torchvision

    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*[(f"data_batch_{i}", per_batch) for i in range(1, 6)], ("test_batch", test)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    # The real files carry checksums; these stand-ins do not.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)


def test_cifar10_folder_in_the_standard_format(tmp_path, monkeypatch):
    write_fake_cifar10(tmp_path, monkeypatch)
    cifar = data.load("cifar10", tmp_path)
    assert cifar.train.images.shape == (15, 3, 32, 32) and cifar.test.images.shape == (4, 3, 32, 32)
    assert cifar.num_classes == 10 and cifar.train.labels.dtype == torch.int64
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())["data"].reshape(4, 3, 32, 32)
    assert torch.equal(cifar.test.images, torch.from_numpy(raw))  # channels first, unchanged


def test_inputs_are_scaled_and_centre_cropped():
    images = torch.randint(0, 256, (3, 2, 10, 12), dtype=torch.uint8)
    x = data.to_inputs(images, 6)
    assert x.shape == (3, 2, 6, 6) and x.dtype == torch.float32
    expected = images[..., 2:8, 3:9].float() / 127.5 - 1
    torch.testing.assert_close(x, expected)
    assert data.to_inputs(torch.full((1, 1, 4, 4), 255, dtype=torch.uint8), 4).eq(1).all()
    with pytest.raises(ValueError, match="crop 16 is larger than the images"):
        data.to_inputs(images, 16)


def test_random_crops_are_windows_of_the_image_possibly_flipped():
    images = torch.randint(0, 256, (64, 1, 9, 9), dtype=torch.uint8)
    crops = data.to_inputs(images, 5, torch.Generator().manual_seed(0))
    source = images.float() / 127.5 - 1
    flipped = 0
    for image, crop in zip(source, crops, strict=True):
        windows = image.unfold(1, 5, 1).unfold(2, 5, 1).reshape(-1, 5, 5)
        plain = (windows == crop[0]).flatten(1).all(1).any()
        mirrored = (windows == crop[0].flip(-1)).flatten(1).all(1).any()
        assert plain or mirrored
        flipped += int(mirrored and not plain)
    assert 10 < flipped < 54  # about half are flipped
    same_size = torch.randint(0, 256, (4, 1, 5, 5), dtype=torch.uint8)
    torch.testing.assert_close(data.to_inputs(same_size, 5, torch.Generator()), data.to_inputs(same_size, 5))


def write_fake_stl10(root, monkeypatch) -> None:
    """stl10_binary/ in the standard layout (uint8 planes, column-major 96x96, labels 1..10)."""
    import torchvision

    folder = root / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in [("train", 4), ("test", 3), ("unlabeled", 6)]:
        (folder / f"{split}_X.bin").write_bytes(rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tobytes())
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(np.arange(1, n + 1, dtype=np.uint8).tobytes())
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)


def test_stl10_trains_on_unlabeled_64_pixel_crops(tmp_path, monkeypatch):
    write_fake_stl10(tmp_path, monkeypatch)
    stl = data.load("stl10", tmp_path)
    assert stl.unlabeled.images.shape == (6, 3, 96, 96) and stl.train.images.shape == (4, 3, 96, 96)
    assert stl.test.labels.tolist() == [0, 1, 2] and stl.crop == 64 and stl.num_classes == 10
    raw = np.fromfile(tmp_path / "stl10_binary" / "test_X.bin", dtype=np.uint8).reshape(3, 3, 96, 96)
    assert torch.equal(stl.test.images, torch.from_numpy(raw).transpose(-1, -2))  # stored column-major
    assert data.to_inputs(stl.unlabeled.images, stl.crop, torch.Generator()).shape == (6, 3, 64, 64)

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
    with pytest.raises(
        ValueError, match="dataset must be one of digits, fashion-mnist, cifar10, cifar100, stl10, folder, synthetic"
    ):
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


def test_strong_views_zoom_flip_and_rescale_and_probes_still_see_the_centre():
    """augment="strong": each view is a bilinear resampling of a square inside the image (a
    constant image stays constant up to its contrast and brightness), within [-1, 1], drawn
    from the generator alone; without a generator (the probes) the centred crop."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (32, 3, 12, 10), dtype=torch.uint8)
    views = data.to_inputs(images, 8, generator, augment="strong")
    assert views.shape == (32, 3, 8, 8) and views.dtype == torch.float32
    assert views.min() >= -1 and views.max() <= 1
    again = data.to_inputs(images, 8, torch.Generator().manual_seed(3), augment="strong")
    torch.testing.assert_close(views, again)
    assert not torch.equal(views, data.to_inputs(images, 8, torch.Generator().manual_seed(3)))
    flat = torch.full((16, 1, 12, 12), 100, dtype=torch.uint8)
    flat_views = data.to_inputs(flat, 8, generator, augment="strong")
    assert (flat_views - flat_views.mean(dim=(2, 3), keepdim=True)).abs().max() < 1e-5  # no edges reached
    assert flat_views.flatten(1)[:, 0].unique().numel() > 8  # brightness drawn per image
    torch.testing.assert_close(data.to_inputs(images, 8, augment="strong"), data.to_inputs(images, 8))
    with pytest.raises(ValueError, match="augment must be one of crop, strong"):
        data.to_inputs(images, 8, generator, augment="jitter")


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


# ---- Fashion-MNIST: idx files ----------------------------------------------------------------------------------------
def write_idx(path, array: np.ndarray) -> None:
    body = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
    if path.suffix == ".gz":
        import gzip

        body = gzip.compress(body)
    path.write_bytes(body)


def write_fake_fashion_mnist(root, gzipped: bool, train: int = 12, test: int = 5):
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", train), ("t10k", test)):
        arrays[split] = (rng.integers(1, 256, (count, 28, 28), dtype=np.uint8), np.arange(count, dtype=np.uint8) % 10)
        suffix = ".gz" if gzipped else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", arrays[split][0])
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", arrays[split][1])
    return arrays


@pytest.mark.parametrize("gzipped", [True, False])
def test_fashion_mnist_from_idx_files_in_torchvisions_layout(tmp_path, gzipped):
    arrays = write_fake_fashion_mnist(tmp_path, gzipped)
    fashion = data.load("fashion-mnist", tmp_path)
    assert fashion.train.images.shape == (12, 1, 36, 36) and fashion.test.images.shape == (5, 1, 36, 36)
    assert fashion.unlabeled is fashion.train and fashion.num_classes == 10 and fashion.crop == 32
    assert fashion.train.labels.tolist() == arrays["train"][1].tolist()
    # The probes see each image centred with a 2-pixel margin of background; training shifts it.
    centre = data.to_inputs(fashion.test.images, 32)
    expected = torch.from_numpy(arrays["t10k"][0]).float().div(127.5).sub(1.0)
    assert torch.equal(centre[:, 0, 2:30, 2:30], expected)
    assert (centre[:, 0, :2] == -1).all() and (centre[:, 0, 30:] == -1).all()
    assert data.training_images("fashion-mnist") == 60000 and data.channels("fashion-mnist") == 1


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_PACKAGE", tmp_path / "no-package")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*FashionMNIST/raw.*--download"):
        data.load("fashion-mnist", tmp_path)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"PK\x03\x04 a zip", "not an idx file"),
        (bytes([0, 0, 8, 3, 0, 0]), "header is cut short"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]), "2 bytes of data for a \\(9,\\) array"),
    ],
)
def test_malformed_idx_files_are_refused(tmp_path, body, message):
    (tmp_path / "bad").write_bytes(body)
    with pytest.raises(ValueError, match=message):
        data.read_idx(tmp_path / "bad")


def test_debians_fashion_mnist_package_when_installed(tmp_path):
    if not data.FASHION_MNIST_PACKAGE.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    fashion = data.load("fashion-mnist", tmp_path / "empty")  # nothing there: the package's files
    assert fashion.train.images.shape == (60000, 1, 36, 36) and fashion.test.images.shape == (10000, 1, 36, 36)
    assert fashion.train.labels[:5].tolist() == [9, 0, 0, 3, 0]  # the dataset's documented first labels
    assert torch.bincount(fashion.test.labels).tolist() == [1000] * 10


# ---- the user's own images -------------------------------------------------------------------------------------------
def write_image_folder(root, unlabeled: int = 0):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)  # not square, not the crop
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    (root / "test" / "dog" / "notes.txt").write_text("not an image")
    if unlabeled:
        (root / "unlabeled" / "deep").mkdir(parents=True)
        for i in range(unlabeled):
            Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(
                root / "unlabeled" / "deep" / f"{i}.jpg"
            )


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_folder_of_images(tmp_path, monkeypatch, in_memory):
    write_image_folder(tmp_path, unlabeled=4)
    if not in_memory:
        monkeypatch.setattr(data, "IN_MEMORY_BYTES", 0)
    folder = data.load("folder", tmp_path, image_size=32)
    assert folder.num_classes == 2 and folder.crop == 32 and folder.channels == 3
    assert folder.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and folder.test.labels.tolist() == [0, 0, 1, 1]
    assert len(folder.unlabeled.labels) == 4 and data.training_images("folder", tmp_path) == 4
    assert isinstance(folder.train.images, torch.Tensor) == in_memory
    batch = folder.train.images[torch.tensor([4, 0])]
    assert batch.shape == (2, 3, 36, 36) and batch.dtype == torch.uint8
    subset = folder.train.take(torch.tensor([5, 1]))
    assert subset.labels.tolist() == [1, 0] and torch.equal(subset.images[0:1], folder.train.images[torch.tensor([5])])
    monkeypatch.undo()
    assert torch.equal(data.load("folder", tmp_path).train.images[torch.tensor([4, 0])], batch)  # either way alike


def test_a_folder_says_what_it_expects(tmp_path):
    with pytest.raises(FileNotFoundError, match="must hold train/ and test/"):
        data.load("folder", tmp_path)
    write_image_folder(tmp_path)
    (tmp_path / "test" / "bird").mkdir()
    with pytest.raises(ValueError, match="test/ has classes that train/ lacks: bird"):
        data.load("folder", tmp_path)


def test_image_data_from_tensors_checks_its_inputs():
    images, labels = torch.zeros(6, 1, 32, 32, dtype=torch.uint8), torch.arange(6) % 3
    made = data.ImageData.from_tensors("mine", images, labels, images[:3], labels[:3])
    assert made.num_classes == 3 and made.unlabeled is made.train and made.channels == 1
    with pytest.raises(ValueError, match="uint8"):
        data.ImageData.from_tensors("mine", images.float(), labels, images, labels)
    with pytest.raises(ValueError, match="smaller than crop 64"):
        data.ImageData.from_tensors("mine", images, labels, images, labels, crop=64)
    with pytest.raises(ValueError, match="one non-negative integer class per image"):
        data.ImageData.from_tensors("mine", images, labels[:5], images, labels)

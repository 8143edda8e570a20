"""Loaders on small data written in the real on-disk formats, and the device augmentation."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from msam.data import build_data
from msam.data.augment import random_crop_flip
from msam.data.loaders import TensorLoader
from msam.errors import ConfigError


def write_tiny_cifar(root, name, n_train=20, n_test=10):
    """The python-pickle layout torchvision reads: data (N, 3072) uint8 and a label list."""
    folder, label_key, files = {
        "cifar10": ("cifar-10-batches-py", "labels", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]),
        "cifar100": ("cifar-100-python", "fine_labels", ["train", "test"]),
    }[name]
    (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    classes = 10 if name == "cifar10" else 100
    for file in files:
        n = n_test if "test" in file else n_train
        payload = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   label_key: rng.integers(0, classes, n).tolist()}
        with open(root / folder / file, "wb") as handle:
            pickle.dump(payload, handle)
    meta_name, meta_key = ("batches.meta", "label_names") if name == "cifar10" else ("meta", "fine_label_names")
    with open(root / folder / meta_name, "wb") as handle:
        pickle.dump({meta_key: [f"class{i}" for i in range(classes)]}, handle)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_from_python_pickles(make_cfg, tmp_path, name):
    cfg = make_cfg(f"dataset={name}")
    write_tiny_cifar(tmp_path / "data" / name, name)
    data = build_data(cfg.dataset, batch_size=10, eval_batch_size=4, seed=0, device=torch.device("cpu"))
    assert data.train_size == (100 if name == "cifar10" else 20) and data.test_size == 10
    assert data.input_shape == (3, 32, 32) and data.num_classes == (10 if name == "cifar10" else 100)
    inputs, targets = next(data.train.epoch(0))
    assert inputs.shape == (10, 3, 32, 32) and targets.dtype == torch.long
    assert len(list(data.test.epoch(0))) == 3  # 10 test images in batches of 4, the last one short


def test_missing_cifar_is_a_one_line_error(make_cfg):
    cfg = make_cfg("dataset=cifar10")
    with pytest.raises(ConfigError, match="cifar10 not found: looked for .*cifar-10-batches-py.*dataset.download=true"):
        build_data(cfg.dataset, 8, 8, 0, torch.device("cpu"))


def write_image_folder(root, classes=("n01", "n02"), per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40 + 3 * i, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"img{i}.JPEG", format="JPEG")


def test_imagenet_loads_an_image_folder_of_jpegs(make_cfg, tmp_path):
    cfg = make_cfg("dataset=imagenet", "dataset.num_classes=2", "dataset.image_size=32",
                   "dataset.resize=36", "dataset.num_workers=0")
    write_image_folder(tmp_path / "data" / "imagenet")
    data = build_data(cfg.dataset, batch_size=2, eval_batch_size=4, seed=0, device=torch.device("cpu"))
    assert (data.train_size, data.test_size, data.input_shape) == (6, 6, (3, 32, 32))
    batches = list(data.train.epoch(0))
    assert len(batches) == 3 and batches[0][0].shape == (2, 3, 32, 32)
    again = list(data.train.epoch(0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))  # (seed, epoch) decides all


def test_missing_imagenet_is_a_one_line_error(make_cfg):
    cfg = make_cfg("dataset=imagenet")
    with pytest.raises(ConfigError, match="imagenet not found: looked for .*train"):
        build_data(cfg.dataset, 8, 8, 0, torch.device("cpu"))


def test_digits_split_is_fixed_and_normalised(make_cfg):
    cfg = make_cfg()
    data = build_data(cfg.dataset, batch_size=64, eval_batch_size=512, seed=3, device=torch.device("cpu"))
    assert (data.train_size, data.test_size, data.input_shape) == (1438, 359, (1, 8, 8))
    every = torch.cat([data.train.inputs, data.test.inputs])
    assert abs(every.mean().item()) < 0.01 and abs(every.std().item() - 1) < 0.01
    other_seed = build_data(cfg.dataset, 64, 512, seed=4, device=torch.device("cpu"))
    assert torch.equal(data.test.inputs, other_seed.test.inputs)


def test_digits_read_without_scikit_learn_equal_load_digits(monkeypatch):
    from sklearn.datasets import load_digits

    from msam.data import digits

    images, labels = digits.read_digits()
    reference = load_digits()
    assert images.dtype == reference.images.dtype and labels.dtype == reference.target.dtype
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)
    # A scikit-learn that keeps its file elsewhere: load_digits itself.
    monkeypatch.setattr(digits.Path, "is_file", lambda self: False)
    images, labels = digits.read_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)


def test_a_digits_run_does_not_import_scikit_learn(tmp_path):
    code = ("import sys, torch; from msam.data.digits import read_digits; read_digits(); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_order_depends_on_seed_and_epoch_only():
    x, y = torch.arange(40.0).view(40, 1), torch.arange(40)
    loader = TensorLoader(x, y, batch_size=8, shuffle=True, drop_last=True, seed=1)
    first = [t for _, t in loader.epoch(0)]
    assert all(torch.equal(a, b) for a, b in zip(first, [t for _, t in loader.epoch(0)]))
    assert not torch.equal(torch.cat(first), torch.cat([t for _, t in loader.epoch(1)]))
    assert sorted(torch.cat(first).tolist()) == list(range(40))


def test_drop_last_keeps_micro_batches_equal():
    loader = TensorLoader(torch.zeros(70, 1), torch.zeros(70), batch_size=32, shuffle=True, drop_last=True)
    assert len(loader) == 2 and all(t.shape[0] == 32 for _, t in loader.epoch(0))


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    images = torch.randn(16, 3, 8, 8)
    out = random_crop_flip(padding=2, flip=False)(images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, images)


def test_flip_mirrors_about_half_the_images():
    images = torch.randn(200, 1, 4, 4)
    out = random_crop_flip(padding=0, flip=True)(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, images)]
    assert all(f or torch.equal(o, i) for f, o, i in zip(flipped, out, images))
    assert 70 < sum(flipped) < 130


def test_device_augmentation_has_torchvision_distribution():
    """Our batched crop/flip draws the same (shift, flip) distribution as torchvision's
    RandomCrop(padding) + RandomHorizontalFlip: both uniform over the 5 x 5 x 2 cases."""
    from torchvision import transforms

    image = (1 + torch.arange(64, dtype=torch.float32)).view(1, 8, 8)  # every pixel unique
    centre, right = image[0, 4, 4].item(), image[0, 4, 5].item()

    def case(out):
        (r, c), (_, c2) = (out[0] == centre).nonzero()[0].tolist(), (out[0] == right).nonzero()[0].tolist()
        return r, c, c2 < c  # where the centre went, and whether the image was mirrored

    n = 5000
    torch.manual_seed(0)
    reference = transforms.Compose([transforms.RandomCrop(8, padding=2), transforms.RandomHorizontalFlip()])
    theirs = [case(reference(image)) for _ in range(n)]
    ours_batch = random_crop_flip(padding=2, flip=True)(image.expand(n, 1, 8, 8), torch.Generator().manual_seed(1))
    ours = [case(out) for out in ours_batch]
    cells = sorted(set(theirs) | set(ours))
    assert len(cells) == 50
    expected = n / 50
    for sample in (theirs, ours):
        chi2 = sum((sample.count(cell) - expected) ** 2 / expected for cell in cells)
        assert chi2 < 90  # 49 degrees of freedom: p < 0.001 beyond ~85
    two_sample = sum((theirs.count(c) - ours.count(c)) ** 2 / (theirs.count(c) + ours.count(c)) for c in cells)
    assert two_sample < 90

"""Datasets in both layouts, image modes, bad files, safe unpickling, transforms driven by the model config."""

import os
import pickle

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data
from PIL import Image

from compactnets import get_model_cfg, safe_pickle
from compactnets.data import DataError, ImageReadError, build_dataset, detect_kind, eval_transform, train_transform
from compactnets.data.classes import CIFAR10_CLASSES


def test_cifar10_pickles(cifar10_pickles):
    assert detect_kind(cifar10_pickles) == "cifar10"
    train = build_dataset(cifar10_pickles, "train")
    test = build_dataset(cifar10_pickles, "test")
    assert len(train) == 20 and len(test) == 4
    assert train.classes == [f"class{i}" for i in range(10)]  # from batches.meta
    img, label = train[0]
    # the first row of data_batch_1, reshaped channel-major as the CIFAR format stores it
    with open(cifar10_pickles / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f)  # our own generated file
    assert torch.equal(img, torch.from_numpy(batch["data"][0].reshape(3, 32, 32)))
    assert label == batch["labels"][0]


def test_cifar100_pickles(cifar100_pickles):
    assert detect_kind(cifar100_pickles) == "cifar100"
    ds = build_dataset(cifar100_pickles, "train")
    assert len(ds) == 6 and len(ds.classes) == 100 and ds.targets[4] == 99
    with pytest.raises(DataError, match="holds no cifar10 python batches"):
        build_dataset(cifar100_pickles, "train", kind="cifar10")


def test_image_folder_converts_every_mode(image_folder):
    assert detect_kind(image_folder) == "imagefolder"
    cfg = get_model_cfg("nin")
    ds = build_dataset(image_folder, "test", eval_transform(cfg))  # 'test' falls back to the val/ folder
    assert ds.classes == ["cat", "dog"] and len(ds) == 10
    for i in range(len(ds)):
        x, _ = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_unreadable_image_names_its_path(image_folder):
    bad = image_folder / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = build_dataset(image_folder, "train")
    index = ds.samples.index((str(bad), 0))
    with pytest.raises(ImageReadError, match=f"cannot read image {bad}"):
        ds[index]


def test_missing_or_unknown_layouts_are_explained(tmp_path):
    with pytest.raises(DataError, match="data path not found: .*nowhere"):
        detect_kind(tmp_path / "nowhere")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset layout"):
        detect_kind(tmp_path / "stuff")
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no 'test/val' folder for the test split"):
        build_dataset(tmp_path / "only_train", "test")


def test_embedded_subset_is_balanced_real_cifar10():
    train, test = build_dataset(None, "train"), build_dataset("embedded", "test")
    assert (len(train), len(test)) == (5000, 1000)
    assert tuple(train.classes) == CIFAR10_CLASSES
    assert np.bincount(train.targets).tolist() == [500] * 10 and np.bincount(test.targets).tolist() == [100] * 10
    assert train.images.shape == (5000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert 80 < train.images.float().mean() < 180  # real photos, not noise or blanks
    assert train.images.float().std() > 40


@needs_shared_data
def test_embedded_subset_equals_the_shared_jpegs():
    test = build_dataset(None, "test")
    real = build_dataset(SHARED_DATA / "cifar10", "test")
    first_bird = real.targets.index(2)
    img = torch.from_numpy(np.array(real.loader(real.samples[first_bird][0]))).permute(2, 0, 1)
    assert torch.equal(test.images[200], img) and test.targets[200] == 2


def test_safe_pickle_refuses_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Exploit()}))
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"data_batch_1 asks to load posix.system"):
        safe_pickle.load(path)
    with pytest.raises(safe_pickle.UnsafePickleError):
        build_dataset(tmp_path, "train")
    # plain data and numpy arrays load
    path.write_bytes(pickle.dumps({"a": np.arange(3), "b": [1, "x"]}))
    assert safe_pickle.load(path)["a"].tolist() == [0, 1, 2]


def test_eval_transform_follows_channel_order_and_range():
    img = torch.zeros(3, 40, 40, dtype=torch.uint8)
    img[0] = 200  # red
    cfg = dict(get_model_cfg("nin"), mean=(0, 0, 0), std=(1, 1, 1), input_size=(3, 32, 32))
    rgb = eval_transform(cfg)(img)
    assert rgb.shape == (3, 32, 32) and rgb[0].max() == pytest.approx(200 / 255) and rgb[2].max() == 0
    bgr = eval_transform(dict(cfg, channel_order="BGR", pixel_range=255.0))(img)
    assert bgr[2].max() == 200 and bgr[0].max() == 0  # raw 0-255, red moved to the last channel
    normalised = eval_transform(dict(cfg, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))(img)
    assert normalised[1].max() == pytest.approx(-2.0)


def test_imagenet_style_eval_resizes_then_crops():
    cfg = dict(get_model_cfg("nin"), input_size=(3, 224, 224), crop_pct=0.875)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    assert eval_transform(cfg)(img).shape == (3, 224, 224)


def test_train_augmentations():
    cfg = get_model_cfg("nin")
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(0)
    views = [train_transform(cfg, "cifar")(img) for _ in range(4)]
    assert all(v.shape == (3, 32, 32) for v in views) and not all(torch.equal(views[0], v) for v in views)
    assert train_transform(cfg, "imagenet", color_jitter=0.4)(img).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        train_transform(cfg, "mixup")

"""Data that must not give a silently wrong figure: labels by class name, hidden entries, symlink loops, 16-bit
images, malformed CIFAR batches, problems of the evaluation split found before training."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import _save_modes
from PIL import Image

import compactnets
from compactnets.checkpoint import save_atomic
from compactnets.data import DataError, build_dataset, eval_transform, load_rgb_image
from compactnets.data.classes import CIFAR10_CLASSES, CIFAR100_CLASSES, match_classes
from compactnets.safe_pickle import UnsafePickleError

TINY = ["--model-kwargs", "channels=[16,16,16,16,16,16,16,16]"]
NARROW_KWARGS = {"channels": [16] * 8}


@pytest.fixture(scope="module")
def cifar_checkpoint(tmp_path_factory):
    """A narrow 10-class binary NIN checkpoint (random weights) naming the CIFAR-10 classes."""
    path = tmp_path_factory.mktemp("ckpt") / "nin.pth"
    torch.manual_seed(0)
    model = compactnets.create_model("nin_xnornet", **NARROW_KWARGS)
    save_atomic(
        {"arch": "nin_xnornet", "model_kwargs": NARROW_KWARGS, "state_dict": model.state_dict(),
         "pretrained_cfg": model.pretrained_cfg, "class_names": list(CIFAR10_CLASSES)},
        path,
    )  # fmt: skip
    return path


def _folder(root, split, classes, images_per_class=2):
    for i, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True)
        rng = np.random.default_rng(i)
        for k in range(images_per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return root


def test_match_classes_by_name():
    model = list(CIFAR10_CLASSES)
    assert match_classes(model, model, 10) == (None, None)
    mapping, note = match_classes(["cat", "ship"], model, 10)
    assert mapping == [3, 8] and "2 of the model's 10 classes" in note
    mapping, note = match_classes(list(reversed(model)), model, 10)
    assert mapping == list(range(9, -1, -1)) and "another order" in note
    with pytest.raises(DataError, match="1 classes the model does not have: zebra"):
        match_classes(["cat", "zebra"], model, 10)
    # ImageNet folders are synset ids, the checkpoint names words: as many classes -> the folder order, noted
    mapping, note = match_classes([f"n{i:08d}" for i in range(10)], model, 10)
    assert mapping is None and "labels follow the data's class order" in note
    with pytest.raises(DataError, match="the data has 10 classes .* none of the model's 100"):
        match_classes(model, list(CIFAR100_CLASSES), 100)
    with pytest.raises(DataError, match="the data has 10 classes .* but the model 1000"):
        match_classes(model, None, 1000)


def test_eval_on_a_subset_of_the_classes_scores_them_by_name(run_cli, cifar_checkpoint, tmp_path):
    """Two of the ten classes, in folders 0 and 1: accuracy must be over the model's classes 3 and 8."""
    data = _folder(tmp_path, "test", ["cat", "ship"], images_per_class=3)
    status, out, err = run_cli("eval", "--checkpoint", cifar_checkpoint, "--data", data, "--json", "--workers", "0")
    assert status == 0 and "2 of the model's 10 classes" in err
    row = json.loads(out)
    model = compactnets.engine.load_model(cifar_checkpoint)
    transform = eval_transform(model.pretrained_cfg)
    ds = build_dataset(data, "test", transform)
    images = torch.stack([ds[i][0] for i in range(len(ds))]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        predicted = model.to(memory_format=torch.channels_last)(images).argmax(1)
    expected = torch.tensor([(3, 8)[ds[i][1]] for i in range(len(ds))])
    assert row["count"] == 6 and row["top1"] == pytest.approx(100 * (predicted == expected).float().mean().item())
    # the old behaviour (folder order) on request
    status, out, _ = run_cli("eval", "--checkpoint", cifar_checkpoint, "--data", data, "--json",
                             "--match-classes", "index", "--workers", "0")  # fmt: skip
    folder_order = torch.tensor([ds[i][1] for i in range(len(ds))])
    assert json.loads(out)["top1"] == pytest.approx(100 * (predicted == folder_order).float().mean().item())


def test_eval_refuses_unknown_classes_and_count_mismatches(run_cli, cifar_checkpoint, tmp_path):
    data = _folder(tmp_path / "extra", "test", ["cat", "zebra"], images_per_class=1)
    status, _, err = run_cli("eval", "--checkpoint", cifar_checkpoint, "--data", data)
    assert status == 2 and "classes the model does not have: zebra" in err and "Traceback" not in err
    # a 100-class head (CIFAR-100 names) on 10-class data
    path = tmp_path / "c100.pth"
    model = compactnets.create_model("nin_xnornet", num_classes=100, **NARROW_KWARGS)
    save_atomic({"arch": "nin_xnornet", "model_kwargs": NARROW_KWARGS, "state_dict": model.state_dict(),
                 "pretrained_cfg": model.pretrained_cfg, "class_names": list(CIFAR100_CLASSES)}, path)  # fmt: skip
    data10 = _folder(tmp_path / "ten", "test", CIFAR10_CLASSES, images_per_class=1)
    status, _, err = run_cli("eval", "--checkpoint", path, "--data", data10)
    assert status == 2 and "none of the model's 100" in err


def test_train_refuses_an_eval_split_with_other_classes_before_training(run_cli, tmp_path):
    data = _folder(tmp_path / "data", "train", ["cat", "dog"])
    _folder(tmp_path / "data", "val", ["cat", "fox"])
    out = tmp_path / "run"
    status, stdout, err = run_cli("train", *TINY, "--data", data, "--epochs", "1", "--output", out, "--no-progress",
                                  "--workers", "0")  # fmt: skip
    assert status == 2 and "classes the model does not have: fox" in err
    assert "epoch 1/1" not in stdout and not (out / "last.pth").exists()


def test_unreadable_eval_image_is_found_before_the_first_epoch(run_cli, tmp_path):
    data = _folder(tmp_path / "data", "train", ["cat", "dog"])
    _folder(tmp_path / "data", "val", ["cat", "dog"])
    broken = data / "val" / "dog" / "broken.png"
    broken.write_bytes(b"\x89PNG not an image")
    status, stdout, err = run_cli("train", *TINY, "--data", data, "--epochs", "1", "--output", tmp_path / "run",
                                  "--no-progress", "--workers", "0")  # fmt: skip
    assert status == 2 and f"cannot read image {broken}" in err and "epoch 1/1" not in stdout


def test_hidden_folders_and_files_are_not_classes_or_samples(tmp_path):
    data = _folder(tmp_path, "val", ["cat", "dog"])
    _folder(tmp_path / "val", ".ipynb_checkpoints", ["cat"])  # val/.ipynb_checkpoints/cat/*.png
    (data / "val" / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "val" / "cat" / ".hidden.png").write_bytes((data / "val" / "cat" / "0.png").read_bytes())
    ds = build_dataset(data, "val")
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    assert all("/." not in path for path, _ in ds.samples)


def test_symlink_loops_do_not_repeat_samples(tmp_path):
    data = _folder(tmp_path, "val", ["cat", "dog"])
    os.symlink("..", data / "val" / "cat" / "up")  # cat/up -> val/: would add dog's images to cat, forever
    os.symlink(".", data / "val" / "dog" / "self")
    (data / "val" / "dog" / "sub").mkdir()
    os.symlink("..", data / "val" / "dog" / "sub" / "back")  # dog/sub/back -> dog/
    ds = build_dataset(data, "val")
    assert len(ds) == 4 and [t for _, t in ds.samples] == [0, 0, 1, 1]
    # the order of torchvision's ImageFolder where there is no loop
    from torchvision.datasets import ImageFolder

    plain = _folder(tmp_path / "plain", "val", ["a", "b"])
    _save_modes(plain / "val" / "a" / "nested")
    assert build_dataset(plain, "val").samples == ImageFolder(str(plain / "val")).samples


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_grayscale_becomes_8_bit(tmp_path, mode):
    ramp = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / ("gray16.png" if mode == "I;16" else "gray32.tif")  # PNG cannot store mode I
    Image.fromarray(ramp if mode == "I;16" else ramp.astype(np.int32)).save(path)
    rgb = np.asarray(load_rgb_image(str(path)))
    assert rgb.shape == (1, 4, 3) and rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb == rgb[..., :1]).all()


def _batch(path, **entries):
    with open(path, "wb") as f:
        pickle.dump(entries, f, protocol=2)


@pytest.mark.parametrize(
    "entries,message",
    [
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2]}, "4 images but 3 labels"),
        ({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}, "expected uint8 rows of 3072 pixels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "label 10 outside the 10 classes"),
        ({"labels": [0]}, "expected the keys \\['data', 'labels'\\]"),
        (None, "is not a CIFAR python file"),
    ],
)
def test_malformed_cifar_batches_name_the_file(cifar10_pickles, entries, message):
    path = cifar10_pickles / "cifar-10-batches-py" / "test_batch"
    if entries is None:
        path.write_bytes(b"garbage, not a pickle")
    else:
        _batch(path, **entries)
    with pytest.raises(DataError, match=f"{path}.*{message}|{message}"):
        build_dataset(cifar10_pickles, "test")


def test_cifar_batch_with_code_is_refused(cifar10_pickles):
    path = cifar10_pickles / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({"data": os.system, "labels": []}, f)
    with pytest.raises(UnsafePickleError, match="system"):
        build_dataset(cifar10_pickles, "test")

"""The in-memory fast data path: the torchvision pipeline's augmentation and pixels, the cache, shards, --amp auto."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data.distributed import DistributedSampler
from torchvision.transforms.v2 import functional as TF

import compactnets.data.memory as memory
from compactnets.checkpoint import load_file, save_atomic
from compactnets.data import train_transform
from compactnets.data.datasets import subset_indices
from compactnets.data.memory import DecodedSplit, DeviceBatches, FastDataUnavailable, check_fast_path, decode_split
from compactnets.data.transforms import to_model_input
from compactnets.engine.distributed import DistInfo, ShardSampler
from compactnets.engine.evaluate import build_eval_loader
from compactnets.engine.precision import resolve_amp
from compactnets.models import get_model_cfg

CFG = get_model_cfg("nin")
BGR_255 = {**CFG, "channel_order": "BGR", "pixel_range": 255.0, "mean": (104.0, 117.0, 123.0), "std": (1.0, 1.0, 1.0)}
TINY = ["--model-kwargs", "channels=[16,16,16,16,16,16,16,16]"]
CHI2_8DF_P001 = 26.12  # chi-square critical value, 8 degrees of freedom, p = 0.001


def _noise_split(n=1, seed=0) -> DecodedSplit:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(1, 256, (n, 32, 32, 3), dtype=np.uint8))
    return DecodedSplit(images, torch.arange(n) % 10, [str(i) for i in range(10)])


def _chi2_uniform(values, cells):
    counts = np.bincount(values, minlength=cells)
    expected = len(values) / cells
    return ((counts - expected) ** 2 / expected).sum()


@pytest.mark.parametrize("cfg", [CFG, BGR_255], ids=["rgb01", "bgr255"])
def test_every_crop_and_flip_equals_torchvision(cfg):
    """For each of the 81 offsets x 2 flips, the batched crop is exactly torchvision's pad-4 crop (+ flip)
    followed by the preset's pixel conversion."""
    split = _noise_split()
    batches = DeviceBatches(split, cfg, torch.device("cpu"), 1, train=True)
    image = split.images[0].permute(2, 0, 1)
    convert = to_model_input(cfg)
    offsets = torch.tensor([(top, left) for top in range(9) for left in range(9)] * 2)
    flips = torch.arange(162) >= 81
    fast = convert(batches.crop_flip(torch.zeros(162, dtype=torch.int64), offsets, flips))
    for k, ((top, left), flip) in enumerate(zip(offsets.tolist(), flips.tolist(), strict=True)):
        reference = TF.crop(TF.pad(image, [4]), top, left, 32, 32)
        reference = convert(TF.horizontal_flip(reference) if flip else reference)
        assert torch.equal(fast[k], reference), (top, left, flip)


def test_augmentation_distribution_matches_torchvision():
    """Offsets uniform on 0..8 in both axes and flips at rate 1/2, for torchvision's pipeline (each output
    identified exactly among the 162 candidates) and for the fast path's draws."""
    split = _noise_split()
    candidates = DeviceBatches(split, CFG, torch.device("cpu"), 1, train=True)
    offsets = torch.tensor([(top, left) for top in range(9) for left in range(9)] * 2)
    flips = torch.arange(162) >= 81
    outputs = to_model_input(CFG)(candidates.crop_flip(torch.zeros(162, dtype=torch.int64), offsets, flips))
    lookup = {outputs[k].numpy().tobytes(): k for k in range(162)}
    assert len(lookup) == 162
    transform = train_transform(CFG, "cifar")
    image = split.images[0].permute(2, 0, 1)
    torch.manual_seed(0)
    drawn = torch.tensor([lookup[transform(image).numpy().tobytes()] for _ in range(1800)])
    torchvision_draws = (offsets[drawn, 0], offsets[drawn, 1], flips[drawn])

    fast = DeviceBatches(_noise_split(1800), CFG, torch.device("cpu"), 100, train=True, seed=3)
    fast_draws = (fast.offsets[:, 0], fast.offsets[:, 1], fast.flips)
    for tops, lefts, flipped in (torchvision_draws, fast_draws):
        assert set(tops.tolist()) == set(lefts.tolist()) == set(range(9))
        assert _chi2_uniform(tops.numpy(), 9) < CHI2_8DF_P001
        assert _chi2_uniform(lefts.numpy(), 9) < CHI2_8DF_P001
        assert abs(flipped.float().mean().item() - 0.5) < 3.3 * 0.5 / 1800**0.5


def test_epochs_are_seeded_and_shards_follow_distributed_sampler():
    split = _noise_split(103)

    def loader(rank=0, world_size=1, seed=5):
        return DeviceBatches(
            split, CFG, torch.device("cpu"), 10, train=True, seed=seed, rank=rank, world_size=world_size
        )

    a, b = loader(), loader()
    a.set_epoch(2)
    b.set_epoch(2)
    batches_a, batches_b = list(a), list(b)
    assert len(batches_a) == len(a) == 11 and len(batches_a[-1][1]) == 3
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(batches_a, batches_b, strict=True))
    b.set_epoch(3)
    assert not torch.equal(b.order, a.order) and not torch.equal(b.offsets, a.offsets)
    for rank in range(2):
        shard = loader(rank, 2)
        sampler = DistributedSampler(range(103), num_replicas=2, rank=rank, seed=5)
        for epoch in (0, 4):
            shard.set_epoch(epoch)
            sampler.set_epoch(epoch)
            assert shard.order.tolist() == list(sampler)
    evaluation = DeviceBatches(split, CFG, torch.device("cpu"), 10, train=False, rank=1, world_size=2)
    assert evaluation.order.tolist() == list(ShardSampler(103, DistInfo(1, 2)))


def test_evaluation_batches_equal_the_torchvision_eval_loader():
    loader = build_eval_loader(CFG, None, "embedded", "test", 64, 0, 200, seed=1)
    fast = DeviceBatches(decode_split(None, "test", "embedded", 200, 1), CFG, torch.device("cpu"), 64, train=False)
    for (x, y), (fx, fy) in zip(loader, fast, strict=True):
        assert torch.equal(x, fx) and torch.equal(y, fy)


def _write_folder(root, seed=0, size=32):
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png"
                )


def test_image_folder_decoded_once_cached_and_redecoded_when_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTNETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    _write_folder(data)
    subset = decode_split(data, "train", "imagefolder", limit=2, seed=0)  # decoded alone, not cached
    assert len(subset) == 2 and not (tmp_path / "cache").exists()
    split = decode_split(data, "train", "imagefolder")
    assert torch.equal(subset.images, split.images[subset_indices(6, 2, 0)])
    assert split.images.shape == (6, 32, 32, 3) and split.images.dtype == torch.uint8
    assert split.targets.tolist() == [0, 0, 0, 1, 1, 1] and split.classes == ["cat", "dog"]
    assert torch.equal(split.images[4], torch.from_numpy(np.array(Image.open(data / "train" / "dog" / "1.png"))))
    cached = list((tmp_path / "cache" / "datasets").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"  # no temporary file left
    with np.load(cached[0], allow_pickle=False) as npz:
        assert sorted(npz.files) == ["classes", "images", "targets"]

    def no_decoding(path):
        raise AssertionError("decoded again")

    monkeypatch.setattr(memory, "load_rgb_image", no_decoding)
    assert torch.equal(decode_split(data, "train", "imagefolder").images, split.images)
    monkeypatch.undo()
    monkeypatch.setenv("COMPACTNETS_CACHE", str(tmp_path / "cache"))

    changed = data / "train" / "dog" / "1.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    again = decode_split(data, "train", "imagefolder")
    assert again.images[4].sum() == 0 and torch.equal(again.images[:4], split.images[:4])
    assert len(list((tmp_path / "cache" / "datasets").iterdir())) == 2


def test_fast_path_refuses_what_it_cannot_reproduce(tmp_path, image_folder):
    for augment, jitter, reason in (("imagenet", 0.0, "augmentations"), ("cifar", 0.4, "--color-jitter")):
        with pytest.raises(FastDataUnavailable, match=reason):
            check_fast_path(CFG, None, "embedded", ["train"], augment, jitter)
    with pytest.raises(FastDataUnavailable, match="the model takes 32x32"):
        check_fast_path(CFG, image_folder, "imagefolder", ["train"], "cifar", 0.0)
    big = {**CFG, "input_size": (3, 96, 96)}
    _write_folder(tmp_path / "big", size=96)
    with pytest.raises(FastDataUnavailable, match="up to 64x64"):
        check_fast_path(big, tmp_path / "big", "imagefolder", ["train"], "cifar", 0.0)
    with pytest.raises(FastDataUnavailable, match="crop_pct"):
        check_fast_path({**CFG, "crop_pct": 0.875}, None, "embedded", ["train"], "cifar", 0.0)


def test_cli_chooses_refuses_and_records(run_cli, tmp_path):
    common = [*TINY, "--train-limit", "100", "--eval-limit", "50", "--epochs", "1", "--no-progress"]
    status, out, _ = run_cli("train", *common, "--amp", "auto", "--output", tmp_path / "fast")
    assert status == 0 and "data: fast path" in out
    options = json.loads((tmp_path / "fast" / "args.json").read_text())
    assert options["fast_data"] == "auto" and options["fast_data_resolved"] == "on"
    assert options["amp"] == "auto" and options["amp_resolved"] == resolve_amp("auto", torch.device("cpu"))[0]
    assert f"precision: {'torch.bfloat16' if options['amp_resolved'] == 'bf16' else 'torch.float32'}" in out

    # A run from before the fast path (no fast_data in its options) resumes on the DataLoader path.
    ckpt = load_file(tmp_path / "fast" / "last.pth")
    del ckpt["args"]["fast_data"]
    save_atomic(ckpt, tmp_path / "fast" / "last.pth")
    status, out, _ = run_cli("train", "--resume", tmp_path / "fast", "--epochs", "2")
    assert status == 0 and "data: torchvision DataLoader" in out and "epoch 2/2" in out

    status, out, _ = run_cli("train", *common, "--color-jitter", "0.2", "--output", tmp_path / "jitter")
    assert status == 0 and "fast data path off: " in out and "data: torchvision DataLoader" in out
    status, _, err = run_cli("train", *common, "--color-jitter", "0.2", "--fast-data", "on", "--output", tmp_path)
    assert status == 2 and err.count("\n") == 1 and "--fast-data on: the fast data path does not implement" in err


def test_amp_auto_follows_the_cpu_flags():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu, {"avx2", "avx512_bf16"}) == ("bf16", "auto: the CPU has avx512_bf16")
    assert resolve_amp("auto", cpu, {"amx_bf16", "amx_tile"})[0] == "bf16"
    assert resolve_amp("auto", cpu, {"avx2", "avx512f"})[0] == "none"
    assert resolve_amp("fp16", cpu, set()) == ("fp16", "as requested")

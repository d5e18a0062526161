"""benchmarks/airbench_anchor.py, the data anchor: its pieces equal the published recipe's formulation (patch
whitening, Muon on the filters as airbench94_muon.py writes it, translations by every offset alike)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import airbench_anchor as anchor  # noqa: E402

from compactnets.data.memory import decode_split  # noqa: E402


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """2,000 real CIFAR-10 training images (the package's subset), normalised."""
    return anchor.normalize(decode_split(None, "train", "embedded", limit=2000).images)


def _patch_moments(model: anchor.CifarNet, images: torch.Tensor) -> torch.Tensor:
    out = F.conv2d(images, model.whiten.weight.double())[:, :12]  # the +filters; the other 12 are their negatives
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    return flat.T @ flat / len(flat)


def test_whitening_filters_whiten_the_patches_they_were_estimated_on(images):
    model = anchor.CifarNet()
    x = images.double()
    model.init_whiten(images, eps=0.0)
    assert torch.allclose(_patch_moments(model, x), torch.eye(12, dtype=torch.float64), atol=2e-4)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])
    # with eps, each direction keeps lambda / (lambda + eps) of its variance: the small ones are damped
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12)
    eigenvalues = torch.linalg.eigvalsh(patches.T @ patches / len(patches))
    model.init_whiten(images, eps=5e-4)
    kept = torch.linalg.eigvalsh(_patch_moments(model, x))
    assert torch.allclose(kept, (eigenvalues / (eigenvalues + 5e-4)).sort().values, atol=2e-4)


def _airbench_filter_step(weight: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: float) -> None:
    """airbench94_muon.py's ``Muon.step`` for one 4-D filter tensor, as published (its sum-form momentum buffer,
    its Newton-Schulz iteration written out)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    buf.mul_(anchor.FILTER_MOMENTUM).add_(grad)
    g = grad.add(buf, alpha=anchor.FILTER_MOMENTUM)
    weight.mul_(len(weight) ** 0.5 / weight.norm())
    x = g.reshape(len(g), -1).bfloat16()
    x /= x.norm() + 1e-7
    for _ in range(anchor.NEWTON_SCHULZ_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    weight.add_(x.view(g.shape).float(), alpha=-lr)


def test_filter_updates_are_airbench_muon_steps():
    torch.manual_seed(0)
    model = anchor.CifarNet()
    sgd, muon = anchor.make_optimizers(model)
    conv = model.layers[2][4]  # the 256 -> 256 filters of the second group
    assert [p is conv.weight for p in muon.param_groups[0]["params"]].count(True) == 1
    assert len(muon.param_groups[0]["params"]) == 6 and len(sgd.param_groups[1]["params"]) == 6
    reference = conv.weight.detach().view(conv.shape).clone()
    buf = torch.zeros_like(reference)
    for step in range(3):
        before = reference * (len(reference) ** 0.5 / reference.norm())
        grad = torch.randn(conv.shape) * (step + 1)
        conv.weight.grad = grad.flatten(1).clone()
        anchor.optimizer_step(sgd, muon, step, total_steps=10, bias_steps=4)
        _airbench_filter_step(reference, grad, buf, anchor.FILTER_LR * (1 - step / 10))
        # both orthogonalise in bfloat16, in a different order of operations: about 1 % of the update apart
        difference = (conv.weight.detach().view(conv.shape) - reference).norm()
        assert difference < 0.03 * (reference - before).norm()
        conv.weight.grad = None
    assert sgd.param_groups[0]["lr"] == pytest.approx(anchor.BIAS_LR * (1 - 2 / 4))
    assert sgd.param_groups[2]["lr"] == pytest.approx(anchor.HEAD_LR * (1 - 2 / 10))


def test_translations_are_crops_at_every_offset_alike():
    n, size, r = 5000, 8, anchor.TRANSLATE
    padded = torch.arange(n * 3 * (size + 2 * r) ** 2, dtype=torch.float32).view(n, 3, size + 2 * r, size + 2 * r)
    out = anchor.random_translate(padded, size, torch.Generator().manual_seed(0))
    offsets = []
    for image, crop in zip(padded, out, strict=True):
        oy, ox = divmod(int(crop[0, 0, 0] - image[0, 0, 0]), size + 2 * r)
        assert torch.equal(crop, image[:, oy : oy + size, ox : ox + size])
        offsets.append((oy, ox))
    counts = torch.bincount(torch.tensor([oy * (2 * r + 1) + ox for oy, ox in offsets]))
    assert len(counts) == (2 * r + 1) ** 2 and counts.min() > 0.7 * n / len(counts)

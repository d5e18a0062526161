"""The models a bench run names: registered ones, and the reference models a row is compared with (anchors),
``tv:NAME`` from torchvision and ``timm:NAME`` from timm (when installed), all with random weights.
"""

from __future__ import annotations

from torch import nn

from ..errors import DeployError
from ..models import IMAGENET_MEAN, IMAGENET_STD, create_model

# Every preprocessing key, as an exported file's metadata must hold: torchvision's ImageNet weights resize to 256
# and crop 224 (bilinear), RGB in [0, 1]; timm's configs lack the last two.
TORCHVISION_CFG = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear", mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, channel_order="RGB", pixel_range=1.0)  # fmt: skip
DEFAULT_ANCHORS = ("tv:shufflenet_v2_x1_0", "tv:mobilenet_v3_small", "tv:mobilenet_v2", "tv:resnet18")


def create_bench_model(name: str) -> nn.Module:
    """A registered model, ``tv:NAME`` (torchvision) or ``timm:NAME``, with random weights, in eval mode and
    with a ``pretrained_cfg`` holding at least ``input_size``."""
    if name.startswith("tv:"):
        import torchvision

        try:
            model = torchvision.models.get_model(name[3:], weights=None)
        except ValueError as e:
            raise DeployError(f"{name}: {e}") from e
        model.pretrained_cfg = dict(TORCHVISION_CFG, architecture=name)
    elif name.startswith("timm:"):
        try:
            import timm
        except ImportError as e:
            raise DeployError(f"{name}: timm is not installed (pip install 'compactnets[timm]')") from e
        try:
            model = timm.create_model(name[5:], pretrained=False)
        except RuntimeError as e:
            raise DeployError(f"{name}: {e}") from e
        cfg = {"channel_order": "RGB", "pixel_range": 1.0, **model.pretrained_cfg}
        model.pretrained_cfg = dict(cfg, architecture=name)
    else:
        model = create_model(name)
    return model.eval()

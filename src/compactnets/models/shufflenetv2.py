"""ShuffleNetV2 and ShuffleNetV2 + WeightNet, in Megvii's layout.

Papers: Ma, Zhang, Huang, Sun, "WeightNet: Revisiting the Design Space of Weight Networks" (ECCV 2020,
arXiv 2007.11823); Ma, Zhang, Zheng, Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design" (ECCV 2018, arXiv 1807.11164).

Sources: megvii-model/WeightNet at 669b5f4 (``shufflenet_v2.py``, ``weightnet.py``, ``train.py``, README) and
MegEngine/Models at 78882f9 (``official/vision/classification/shufflenet/model.py``). Module names, widths,
biases, the even/odd channel split, initialisation and the MACs convention follow that code, so official
MegEngine checkpoints load by name (``compactnets convert --family weightnet``) and give the same logits.

Three kinds of model, all in one layout (stem ``first_conv`` -> max-pool -> 16 ``features`` blocks ->
``conv_last`` -> average pool -> [dropout, 2.0x] -> ``classifier``):

* ``shufflenet_v2_x*``: MegEngine/Models (standard widths, no biases), whose hub weights expect BGR input
  normalised with mean/std on 0-255; the baseline comparable to torchvision's (which splits channels by halves).
* ``shufflenet_v2_x*_wnbase``: the baselines of the WeightNet tables, at the WeightNet repository's narrower
  widths (1.0x: 112/224/448; 2.0x: 248/496/992 + 1024) with biases on the stem, ``conv_last`` and classifier.
* ``shufflenet_v2_x*_wn{1,4,8}x``: every block conv replaced by a WeightNet of ratio M/G; 1x is the released
  M=2, G=2 code (weights expect raw BGR 0-255). No code or weights exist for 4x/8x; their (M, G) are
  back-solved from the README's figures (see ``default_cfgs``).

Deliberate differences: the global pool is adaptive (the official AvgPool2d(7) is the same at 224), and the
per-sample convolution may run as a batched matmul for ONNX export (``impl='matmul'``). The N = 1 dense path of
the official ``WeightNet.forward`` is the folded convolution at N = 1, so it needs no special case here.
"""

import pickle
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import safe_pickle
from ..checkpoint import CheckpointError
from ..layers import WeightNet, WeightNetDW, create_global_pool
from ._features import FeatureStages, identity_after
from ._registry import model_cfg, register_converter, register_model

FAMILY = "weightnet"

STAGE_REPEATS = (4, 8, 4)
# Output channels of the stem, the three stages and conv_last.
STANDARD_WIDTHS = {  # MegEngine/Models, ShuffleNet-Series and the ShuffleNetV2 paper
    "0.5x": (24, 48, 96, 192, 1024),
    "1.0x": (24, 116, 232, 464, 1024),
    "1.5x": (24, 176, 352, 704, 1024),
    "2.0x": (24, 244, 488, 976, 2048),
}
WEIGHTNET_WIDTHS = {  # "reduced slightly to make WeightNet's FLOPs comparable to the baselines"
    "0.5x": (24, 48, 96, 192, 1024),
    "1.0x": (24, 112, 224, 448, 1024),
    "1.5x": (24, 176, 352, 704, 1024),
    "2.0x": (24, 248, 496, 992, 1024),
}
# Both repositories use dropout before the classifier for 2.0x only.
DROP_RATE = {"0.5x": 0.0, "1.0x": 0.0, "1.5x": 0.0, "2.0x": 0.2}
# Preprocessing of the official weights (BGR order, on 0-255 pixels).
MEGENGINE_MEAN = (103.530, 116.280, 123.675)
MEGENGINE_STD = (57.375, 57.120, 58.395)


def split_even_odd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Megvii's stride-1 split: even channels pass through, odd channels enter the branch. With the
    ``cat([pass-through, branch])`` that ends each block, this is the channel shuffle."""
    return x[:, 0::2], x[:, 1::2]


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_chs)]


class ShuffleV2Block(nn.Module):
    """Static block (MegEngine/Models): ``branch_main`` = pw-BN-ReLU, dw-BN, pw-BN-ReLU; stride 2 adds
    ``branch_proj`` = dw-BN, pw-BN-ReLU on the whole input.

    Args:
        in_chs: branch input channels (half the block input at stride 1).
        out_chs: block output channels; the main branch makes ``out_chs - in_chs`` of them.
    """

    def __init__(self, in_chs: int, out_chs: int, mid_chs: int, stride: int, kernel_size: int = 3):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleV2Block stride must be 1 or 2, not {stride}")
        self.stride = stride
        self.branch_main = nn.Sequential(
            *_conv_bn(in_chs, mid_chs, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(mid_chs, mid_chs, kernel_size, stride, groups=mid_chs),
            *_conv_bn(mid_chs, out_chs - in_chs, 1),
            nn.ReLU(inplace=True),
        )
        if stride == 2:
            self.branch_proj = nn.Sequential(
                *_conv_bn(in_chs, in_chs, kernel_size, stride, groups=in_chs),
                *_conv_bn(in_chs, in_chs, 1),
                nn.ReLU(inplace=True),
            )
        else:  # unused; TorchScript compiles both branches of forward
            self.branch_proj = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x_proj, x = split_even_odd(x)
            return torch.cat((x_proj, self.branch_main(x)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


class _NoProjection(nn.Module):
    """Stands in for the projection WeightNets of a stride-1 block, which never runs them."""

    def forward(self, x: torch.Tensor, x_gap: torch.Tensor) -> torch.Tensor:
        return x


class WeightNetShuffleV2Block(nn.Module):
    """ShuffleV2 block with every conv generated per sample (official ``ShuffleV2Block`` of WeightNet).

    One gate input ``x_gap = reduce(GAP(x))`` per block (no activation; r = max(16, in_chs // 16) channels,
    from the branch input: the odd half at stride 1) feeds all its WeightNet modules.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        stride: int,
        kernel_size: int = 3,
        M: int = 2,
        G: int = 2,
        impl: str = "grouped",
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"WeightNetShuffleV2Block stride must be 1 or 2, not {stride}")
        self.stride = stride
        gate_chs = max(16, in_chs // 16)
        dense = partial(WeightNet, kernel_size=1, gate_chs=gate_chs, M=M, G=G, impl=impl)
        depthwise = partial(WeightNetDW, kernel_size=kernel_size, stride=stride, gate_chs=gate_chs, M=M, G=G, impl=impl)
        self.reduce = nn.Conv2d(in_chs, gate_chs, 1)
        self.wnet1 = dense(in_chs, mid_chs)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.wnet2 = depthwise(mid_chs)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.wnet3 = dense(mid_chs, out_chs - in_chs)
        self.bn3 = nn.BatchNorm2d(out_chs - in_chs)
        if stride == 2:
            self.wnet_proj_1 = depthwise(in_chs)
            self.bn_proj_1 = nn.BatchNorm2d(in_chs)
            self.wnet_proj_2 = dense(in_chs, in_chs)
            self.bn_proj_2 = nn.BatchNorm2d(in_chs)
        else:  # unused; TorchScript compiles both branches of forward
            self.wnet_proj_1 = self.wnet_proj_2 = _NoProjection()
            self.bn_proj_1 = self.bn_proj_2 = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_proj, x = split_even_odd(x) if self.stride == 1 else (x, x)
        x_gap = self.reduce(x.mean((2, 3), keepdim=True))
        x = self.relu(self.bn1(self.wnet1(x, x_gap)))
        x = self.bn2(self.wnet2(x, x_gap))
        x = self.relu(self.bn3(self.wnet3(x, x_gap)))
        if self.stride == 2:
            x_proj = self.bn_proj_1(self.wnet_proj_1(x_proj, x_gap))
            x_proj = self.relu(self.bn_proj_2(self.wnet_proj_2(x_proj, x_gap)))
        return torch.cat((x_proj, x), 1)

    def to_mixture(self) -> "WeightNetShuffleV2Block":
        """In place, for inference: every WeightNet and the BN after it become one static
        :class:`~compactnets.layers.weightnet.MixtureConv2d` (eval-mode BN). Returns the block."""
        pairs = [("wnet1", "bn1"), ("wnet2", "bn2"), ("wnet3", "bn3")]
        if self.stride == 2:
            pairs += [("wnet_proj_1", "bn_proj_1"), ("wnet_proj_2", "bn_proj_2")]
        for wnet, bn in pairs:
            setattr(self, wnet, getattr(self, wnet).mixture(getattr(self, bn)))
            setattr(self, bn, nn.Identity())
        return self


class ShuffleNetV2(FeatureStages, nn.Module):
    """ShuffleNetV2 in Megvii's layout, static or with WeightNet blocks.

    Args:
        widths: output channels of the stem, the three stages and ``conv_last``.
        weightnet: WeightNet blocks (``M``, ``G``, ``impl`` apply to them only).
        M, G: WeightNet gates per output channel and ``wn_fc2`` groups per output channel (ratio M/G).
        impl: per-sample convolution, ``grouped`` (official) or ``matmul`` (ONNX with a dynamic batch).
        bias: biases on the stem conv, ``conv_last`` and the classifier (WeightNet repository).
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        widths: Sequence[int] = STANDARD_WIDTHS["1.0x"],
        weightnet: bool = False,
        M: int = 2,
        G: int = 2,
        impl: str = "grouped",
        bias: bool = False,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
    ):
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"ShuffleNetV2 needs 5 widths (stem, 3 stages, conv_last), got {len(widths)}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = widths[-1]
        self.bias = bias
        stem_chs = widths[0]
        self.first_conv = nn.Sequential(
            nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=bias), nn.BatchNorm2d(stem_chs), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        block = partial(WeightNetShuffleV2Block, M=M, G=G, impl=impl) if weightnet else ShuffleV2Block
        blocks, in_chs = [], stem_chs
        self.feature_info = [dict(num_chs=stem_chs, reduction=2, module="first_conv")]
        for stage, (repeats, out_chs) in enumerate(zip(STAGE_REPEATS, widths[1:4], strict=True)):
            for i in range(repeats):
                stride = 2 if i == 0 else 1
                blocks.append(block(in_chs if stride == 2 else in_chs // 2, out_chs, out_chs // 2, stride))
                in_chs = out_chs
            self.feature_info.append(
                dict(num_chs=out_chs, reduction=2 ** (stage + 3), module=f"features.{len(blocks) - 1}")
            )
        self.features = nn.Sequential(*blocks)
        self.conv_last = nn.Sequential(
            nn.Conv2d(in_chs, widths[-1], 1, bias=bias), nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.reset_classifier(num_classes, global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        """The official rule, on MegEngine's weight shapes: conv N(0, 0.01) for the stem, else
        N(0, 1 / shape[1]) where a grouped conv's shape is (groups, out/groups, in/groups, k, k): a dense conv gets
        std 1/in, ``wn_fc2`` 1/(in*k*k/G) and a depthwise ``wn_fc2`` 1/(k*k). Biases 0; BN weight 1, bias 1e-4;
        Linear N(0, 0.01)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                megengine_dim1 = m.out_channels // m.groups if m.groups > 1 else m.in_channels
                nn.init.normal_(m.weight, 0, 0.01 if name.startswith("first_conv") else 1.0 / megengine_dim1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.constant_(m.bias, 1e-4)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New ``classifier`` (a Sequential holding the Linear, as in the official state dict); 0 removes it."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool, self.flatten = create_global_pool(global_pool, "ShuffleNetV2")
        self.classifier = (
            nn.Sequential(nn.Linear(self.num_features, num_classes, bias=self.bias))
            if num_classes > 0
            else nn.Identity()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.features(self.maxpool(self.first_conv(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.global_pool(x))
        return x if pre_logits else self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def inference_form(self) -> "ShuffleNetV2":
        """For :func:`compactnets.deploy.inference_form` (which folds the remaining BNs): WeightNet blocks in
        their static mixture form, the fastest in eager mode and in onnxruntime, with a dynamic batch."""
        for block in self.features:
            if isinstance(block, WeightNetShuffleV2Block):
                block.to_mixture()
        return self

    def _feature_steps(self):
        ends = [0] + [2 + int(info["module"].split(".")[1]) for info in self.feature_info[1:]]
        return [self.first_conv, self.maxpool, *self.features, self.conv_last], ends

    def _prune_after(self, level: int) -> None:
        if level == 0:
            self.maxpool = nn.Identity()
        identity_after(self.features, int(self.feature_info[level]["module"].split(".")[1]) if level else -1)
        self.conv_last = nn.Identity()


# --- official checkpoints ---------------------------------------------------------------------------------


def read_megengine_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A file of ``megengine.save``: a pickle of {name: numpy array} (hub ``.model``/``.pkl`` files, WeightNet's
    ``checkpoint-XXXXXX.pkl``) or of {'epoch', 'state_dict'} (MegEngine/Models' ``checkpoint.pkl``), read with
    the restricted unpickler (numpy arrays only)."""
    try:
        obj = safe_pickle.load(path)
    except safe_pickle.UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a MegEngine checkpoint (a pickle of numpy arrays): {e}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a MegEngine state dict")
    return {k: torch.from_numpy(np.array(v)) for k, v in obj.items() if isinstance(v, np.ndarray)}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ShuffleNetV2) -> dict[str, torch.Tensor]:
    """MegEngine tensors -> ours, by name (the module names are the official ones): 5-D grouped kernels
    (groups, out/groups, in/groups, k, k) -> (out, in/groups, k, k) (both store groups group-major);
    (1, C, 1, 1) biases and BN tensors -> (C,); ``num_batches_tracked`` supplied. Anything else is kept as is,
    so a checkpoint of another model fails the shape check naming the key."""
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if value.ndim == 5:
            value = value.reshape(value.shape[0] * value.shape[1], *value.shape[2:])
        elif (
            key in own
            and own[key].ndim == 1
            and value.ndim == 4
            and value.shape[0] == value.shape[2] == value.shape[3] == 1
        ):
            value = value.reshape(-1)
        out[key] = value
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            out.setdefault(key, torch.zeros_like(value))
    return out


# The preprocessing of each model's official weights is in its default config, which `convert` saves.
register_converter(FAMILY, checkpoint_filter_fn, reader=read_megengine_checkpoint)


# --- configs and constructors -----------------------------------------------------------------------------

_WEIGHTNET_README = "megvii-model/WeightNet README.md @669b5f4"
_WEIGHTNET_URL = "https://data.megengine.org.cn/models/weights/wnet/snetv2_{}_wnet1x_M2G2.model"
_MEGENGINE_URLS = {
    "0.5x": "https://data.megengine.org.cn/models/weights/snetv2_x0_5_60750_c28db1a2.pkl",
    "1.0x": "https://data.megengine.org.cn/models/weights/snetv2_x1_0_69369_daf9dba0.pkl",
    "1.5x": "https://data.megengine.org.cn/models/weights/snetv2_x1_5_72775_38ac4273.pkl",
    "2.0x": "https://data.megengine.org.cn/models/weights/snetv2_x2_0_75115_497d4601.pkl",
}
_PAPERS = "WeightNet (ECCV 2020, arXiv 2007.11823); ShuffleNet V2 (ECCV 2018, arXiv 1807.11164)"


def _cfg(raw_bgr: bool, **kwargs) -> dict:
    """ImageNet at 224 (resize 256, center crop), BGR 0-255 pixels: raw for the WeightNet repository's models,
    normalised with MegEngine's mean/std for MegEngine/Models'."""
    return model_cfg(
        crop_pct=224 / 256,
        interpolation="bilinear",
        channel_order="BGR",
        pixel_range=255.0,
        mean=(0.0, 0.0, 0.0) if raw_bgr else MEGENGINE_MEAN,
        std=(1.0, 1.0, 1.0) if raw_bgr else MEGENGINE_STD,
        first_conv="first_conv.0",
        classifier="classifier.0",
        pool_size=(7, 7),
        paper=_PAPERS,
        **kwargs,
    )


def _weightnet_cfg(params: str, macs: str, top1_err: float, notes: str, weights: str = "") -> dict:
    reference = dict(
        params=params,
        macs=macs,
        macs_convention="flop_counter",
        top1=round(100 - top1_err, 1),
        source=_WEIGHTNET_README + " (top-1 = 100 - the README's error)",
        notes=notes,
    )
    weights = f"; official weights: {weights} (compactnets convert --family weightnet)" if weights else ""
    return _cfg(True, reference=reference, source="megvii-model/WeightNet @669b5f4", notes=notes + weights)


def _megengine_cfg(width: str, params: str, macs: str, top1: float, top5: float, paper_err: float) -> dict:
    reference = dict(
        params=params,
        macs=macs,
        macs_convention="flop_counter",
        top1=top1,
        top5=top5,
        source="top-1/5: MegEngine/Models shufflenet README @78882f9 (its hub weights); params/MACs: "
        "megvii-model/ShuffleNet-Series ShuffleNetV2/README.md @0127af0",
        notes=f"standard widths, no biases; ShuffleNet-Series reports top-1 err {paper_err} for its own run",
    )
    notes = f"official weights: {_MEGENGINE_URLS[width]} (compactnets convert --family weightnet)"
    return _cfg(False, reference=reference, source="MegEngine/Models @78882f9 shufflenet/model.py", notes=notes)


_BASELINE_NOTE = "ShuffleNetV2 at the WeightNet repository's widths with biases; no released weights"
_COUNT_NOTE = "MACs: every conv and linear layer at 224, the weight generators reduce/wn_fc1/wn_fc2 included"
default_cfgs = {
    "shufflenet_v2_x0_5": _megengine_cfg("0.5x", "1.4M", "41M", 60.696, 82.190, 38.9),
    "shufflenet_v2_x1_0": _megengine_cfg("1.0x", "2.3M", "146M", 69.372, 88.764, 30.6),
    "shufflenet_v2_x1_5": _megengine_cfg("1.5x", "3.5M", "299M", 72.806, 90.792, 27.4),
    "shufflenet_v2_x2_0": _megengine_cfg("2.0x", "7.4M", "591M", 75.074, 92.278, 25.0),
    "shufflenet_v2_x0_5_wnbase": _weightnet_cfg(
        "1.4M", "41M", 39.7, _BASELINE_NOTE + "; 40.48M MACs print as 40M: 41M is the ShuffleNetV2 paper's figure"
    ),
    "shufflenet_v2_x1_0_wnbase": _weightnet_cfg("2.2M", "138M", 30.9, _BASELINE_NOTE + " (112/224/448)"),
    "shufflenet_v2_x1_5_wnbase": _weightnet_cfg("3.5M", "299M", 27.4, _BASELINE_NOTE),
    "shufflenet_v2_x2_0_wnbase": _weightnet_cfg("5.5M", "557M", 25.5, _BASELINE_NOTE + " (248/496/992, last 1024)"),
    "shufflenet_v2_x0_5_wn1x": _weightnet_cfg(
        "1.5M", "41M", 36.7, f"M=2, G=2 (released); {_COUNT_NOTE}", _WEIGHTNET_URL.format("0.5x")
    ),
    "shufflenet_v2_x1_0_wn1x": _weightnet_cfg(
        "2.4M", "139M", 28.8, f"M=2, G=2 (released); {_COUNT_NOTE}", _WEIGHTNET_URL.format("1.0x")
    ),
    "shufflenet_v2_x1_5_wn1x": _weightnet_cfg(
        "3.9M", "301M", 25.6, f"M=2, G=2 (released); {_COUNT_NOTE}", _WEIGHTNET_URL.format("1.5x")
    ),
    "shufflenet_v2_x2_0_wn1x": _weightnet_cfg(
        "6.1M",
        "562M",
        24.1,
        "M=2, G=2 (released code and weights: 6,198,068 params / 561,367,920 MACs, printed 6.2M / 561M); "
        "no (M, G) gives the README row (6.1M / 562M): M=1, G=1 gives 6.0M / 561M, M=4, G=4 6.7M / 562M",
        _WEIGHTNET_URL.format("2.0x"),
    ),
    "shufflenet_v2_x0_5_wn8x": _weightnet_cfg(
        "2.7M", "42M", 34.0, "M=8, G=1 (back-solved from the README; no released code or weights)"
    ),
    "shufflenet_v2_x1_0_wn4x": _weightnet_cfg(
        "5.1M", "141M", 27.6, "M=8, G=2 (back-solved from the README; no released code or weights)"
    ),
    "shufflenet_v2_x1_5_wn4x": _weightnet_cfg(
        "9.6M", "307M", 25.0, "M=4, G=1 (back-solved from the README; no released code or weights)"
    ),
    "shufflenet_v2_x2_0_wn4x": _weightnet_cfg(
        "18.1M",
        "573M",
        23.5,
        "M=8, G=2, the closest (M, G): MACs match (573M) but params are 18,268,604 (18.3M); M=4, G=1 gives "
        "17,334,636 / 572.5M; no ratio-4 configuration gives 18.1M. No released code or weights",
    ),
}


def _create(width: str, *, wn_widths: bool, weightnet: bool = False, **kwargs) -> ShuffleNetV2:
    widths = WEIGHTNET_WIDTHS[width] if wn_widths else STANDARD_WIDTHS[width]
    # The WeightNet repository's models have biases on the stem, conv_last and classifier; MegEngine/Models' none.
    defaults = dict(widths=widths, weightnet=weightnet, bias=wn_widths, drop_rate=DROP_RATE[width])
    return ShuffleNetV2(**{**defaults, **kwargs})


@register_model
def shufflenet_v2_x0_5(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 0.5x, MegEngine/Models (48/96/192)."""
    return _create("0.5x", wn_widths=False, **kwargs)


@register_model
def shufflenet_v2_x1_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x, MegEngine/Models (116/232/464)."""
    return _create("1.0x", wn_widths=False, **kwargs)


@register_model
def shufflenet_v2_x1_5(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.5x, MegEngine/Models (176/352/704)."""
    return _create("1.5x", wn_widths=False, **kwargs)


@register_model
def shufflenet_v2_x2_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 2.0x, MegEngine/Models (244/488/976, last 2048)."""
    return _create("2.0x", wn_widths=False, **kwargs)


@register_model
def shufflenet_v2_x0_5_wnbase(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 0.5x baseline of the WeightNet tables."""
    return _create("0.5x", wn_widths=True, **kwargs)


@register_model
def shufflenet_v2_x1_0_wnbase(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x baseline of the WeightNet tables (112/224/448)."""
    return _create("1.0x", wn_widths=True, **kwargs)


@register_model
def shufflenet_v2_x1_5_wnbase(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.5x baseline of the WeightNet tables."""
    return _create("1.5x", wn_widths=True, **kwargs)


@register_model
def shufflenet_v2_x2_0_wnbase(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 2.0x baseline of the WeightNet tables (248/496/992, last 1024)."""
    return _create("2.0x", wn_widths=True, **kwargs)


@register_model
def shufflenet_v2_x0_5_wn1x(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 0.5x + WeightNet 1x (M=2, G=2), the released model."""
    return _create("0.5x", wn_widths=True, weightnet=True, **kwargs)


@register_model
def shufflenet_v2_x1_0_wn1x(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x + WeightNet 1x (M=2, G=2), the released model."""
    return _create("1.0x", wn_widths=True, weightnet=True, **kwargs)


@register_model
def shufflenet_v2_x1_5_wn1x(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.5x + WeightNet 1x (M=2, G=2), the released model."""
    return _create("1.5x", wn_widths=True, weightnet=True, **kwargs)


@register_model
def shufflenet_v2_x2_0_wn1x(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 2.0x + WeightNet 1x (M=2, G=2), the released model."""
    return _create("2.0x", wn_widths=True, weightnet=True, **kwargs)


@register_model
def shufflenet_v2_x0_5_wn8x(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 0.5x + WeightNet 8x (M=8, G=1)."""
    return _create("0.5x", wn_widths=True, weightnet=True, **{"M": 8, "G": 1, **kwargs})


@register_model
def shufflenet_v2_x1_0_wn4x(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x + WeightNet 4x (M=8, G=2)."""
    return _create("1.0x", wn_widths=True, weightnet=True, **{"M": 8, "G": 2, **kwargs})


@register_model
def shufflenet_v2_x1_5_wn4x(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.5x + WeightNet 4x (M=4, G=1)."""
    return _create("1.5x", wn_widths=True, weightnet=True, **{"M": 4, "G": 1, **kwargs})


@register_model
def shufflenet_v2_x2_0_wn4x(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 2.0x + WeightNet 4x (M=8, G=2, the closest to the README's 18.1M params)."""
    return _create("2.0x", wn_widths=True, weightnet=True, **{"M": 8, "G": 2, **kwargs})

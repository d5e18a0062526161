"""torch.hub entry points: one per compactnets model (``compactnets list`` shows them).

Like MegEngine's ``megengine.hub.load("megengine/models", "shufflenet_v2_x1_0", pretrained=True)``::

    import torch
    # random weights
    model = torch.hub.load("/path/to/compactnets", "shufflenet_v2_x1_0", source="local")
    # the weights bundled with compactnets for the model's default tag (offline)
    model = torch.hub.load("/path/to/compactnets", "nin_xnornet", source="local", pretrained=True)
    # weights from a checkpoint written by `compactnets convert` (or `compactnets train`): its model_kwargs apply
    model = torch.hub.load("/path/to/compactnets", "shufflenet_v2_x1_0_wn1x", source="local",
                           pretrained="snetv2_1.0x_wnet1x_M2G2.pth")

compactnets downloads nothing: ``pretrained=True`` for a model without bundled weights raises an error that
names the official weight file and the ``compactnets convert`` command that turns it into a checkpoint.
"""

import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch"]

_SRC = str(_Path(__file__).resolve().parent / "src")
if _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)  # this checkout's package, installed or not

import compactnets as _compactnets  # noqa: E402


def _entrypoint(name: str):
    def entrypoint(pretrained=False, **kwargs):
        return _compactnets.create_model(name, pretrained=pretrained, **kwargs)

    reference = _compactnets.get_model_cfg(name)["reference"]
    published = ", ".join(f"{k} {reference[k]}" for k in ("params", "macs", "top1") if k in reference)
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"compactnets model {name!r}" + (f" (published: {published})" if published else "")
    return entrypoint


for _name in _compactnets.list_models():
    globals()[_name] = _entrypoint(_name)

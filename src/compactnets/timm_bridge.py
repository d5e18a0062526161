"""Registration of every compactnets model in timm's registry, when timm is installed.

``import compactnets`` registers them at once if timm is already imported, or else right after timm is
first imported (a one-shot import hook), so ``import compactnets`` stays as fast without timm in use.
Then ``timm.create_model('nin_xnornet')``, ``timm.list_models('nin*')`` and timm's data-config helpers work.
timm's transforms assume RGB inputs scaled to 0-1: for models whose config says BGR or 0-255 pixels use
``compactnets.data.eval_transform`` instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

# timm's register_model reads this module's default_cfgs (plain dicts of PretrainedCfg fields).
default_cfgs: dict[str, dict] = {}
_TIMM_CFG_KEYS = ("num_classes", "input_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier")


def _entrypoint(name: str):
    def fn(pretrained=False, **kwargs):
        from .registry import create_model

        for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(timm_only, None)
        return create_model(name, pretrained=pretrained, **kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"compactnets model {name!r}."
    return fn


def register_all() -> list[str]:
    """Register every compactnets model with timm; names timm already uses are left to timm."""
    from timm.models import is_model, register_model

    from .registry import get_model_cfg, list_models

    registered = []
    for name in list_models():
        if is_model(name) and name not in default_cfgs:
            continue
        cfg = get_model_cfg(name)
        default_cfgs[name] = {k: cfg[k] for k in _TIMM_CFG_KEYS} | {"paper_name": cfg["paper"], "notes": cfg["notes"]}
        register_model(_entrypoint(name))
        registered.append(name)
    return registered


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Runs register_all once timm's package has executed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            register_all()

        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    if "timm" in sys.modules:
        register_all()
    elif importlib.util.find_spec("timm") is not None:
        sys.meta_path.insert(0, _AfterTimmImport())

"""Registration of every compactnets model in timm's registry, when timm is installed.

``import compactnets`` registers them at once if timm is already imported, or else right after timm is
first imported (a one-shot import hook), so ``import compactnets`` stays as fast without timm in use.
Then ``timm.create_model('nin_xnornet')``, ``timm.list_models('nin*')``, ``timm.list_pretrained()``,
``features_only=True`` (with any ``feature_cfg`` / ``feature_cls``) and timm's data-config helpers work;
pretrained tags (``'arch.tag'``) load the weights bundled with compactnets, ``pretrained_cfg_overlay=dict(file=...)``
or ``checkpoint_path`` a local file.

Why an import hook: timm finds models only in its own registry, filled by ``register_model`` calls at import
(it reads no entry points and has no plugin mechanism), so compactnets must call ``register_model`` after timm
is imported and before ``timm.create_model`` runs. In ``import compactnets; import timm;
timm.create_model('nin_xnornet')`` no compactnets code runs in between; without the hook ``import compactnets``
would have to import timm itself, which imports torch and timm's models: about 2.5 s instead of 0.05 s on every
``import compactnets`` and ``compactnets --help``, timm in use or not. The hook (a ``sys.meta_path`` finder,
the standard post-import hook) hands out timm's own spec with ``exec_module`` wrapped, and removes itself when
timm executes; ``import timm, compactnets`` registers at once and installs none.

timm's transforms feed RGB pixels scaled to 0-1: for models whose weights expect 0-255 pixels the timm config
carries mean/std divided by 255 (the same normalisation), but BGR models cannot be expressed, so creating one
through timm warns and names ``compactnets.data.eval_transform``.
"""

import importlib.abc
import importlib.util
import sys
import warnings

# timm's register_model reads this module's default_cfgs (DefaultCfg per architecture, from 'arch.tag' keys).
default_cfgs: dict = {}
_TIMM_CFG_KEYS = ("num_classes", "input_size", "crop_pct", "interpolation", "first_conv", "classifier", "pool_size")


def timm_cfg(name: str, cfg: dict) -> dict:
    """A compactnets config of ``name`` ('arch' or 'arch.tag') in timm's ``PretrainedCfg`` fields: mean/std on
    0-1 pixels, the weights file as an absolute path."""
    notes = cfg["notes"]
    if cfg["channel_order"] != "RGB":
        notes = f"{bgr_warning(name)} {notes}".strip()
    out = {k: cfg[k] for k in _TIMM_CFG_KEYS} | _timm_normalisation(cfg) | {"paper_name": cfg["paper"], "notes": notes}
    if cfg["file"]:
        from .models import bundled_weights_file  # the registry imports torch: only once timm is in use

        out["file"] = str(bundled_weights_file(name))
    return out


def _timm_normalisation(cfg: dict) -> dict:
    """mean/std for pixels scaled to 0-1: ``(x - m) / s`` on 0-255 pixels is ``(x/255 - m/255) / (s/255)``."""
    scale = cfg["pixel_range"]
    return {"mean": tuple(m / scale for m in cfg["mean"]), "std": tuple(s / scale for s in cfg["std"])}


def bgr_warning(name: str) -> str:
    return (
        f"{name} expects BGR pixels, which timm's transforms (resolve_model_data_config + create_transform) "
        "cannot produce: preprocess with compactnets.data.eval_transform(model.pretrained_cfg)."
    )


def _entrypoint(name: str):
    def fn(
        pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, feature_cfg=None, **kwargs
    ):
        from timm.models import build_model_with_cfg, resolve_pretrained_cfg

        resolved = resolve_pretrained_cfg(name, pretrained_cfg, pretrained_cfg_overlay).to_dict()
        tagged = f"{name}.{resolved['tag']}" if resolved.get("tag") else name
        # create_model loads the weights (tags, compactnets checkpoints, classifier and first-conv adaptation);
        # timm builds the cfg and, with features_only, its feature wrapper: the caller's feature_cfg (and
        # feature_cls, out_indices) over ours, FeatureGetterNet over forward_intermediates by default.
        weights = ((pretrained_cfg_overlay or {}).get("file") or True) if pretrained else False
        feature_cfg = {"feature_cls": "getter", "out_indices": None, **(feature_cfg or {})}
        built = {}

        def build(**kw):
            from .models import create_model

            built["model"] = model = create_model(tagged, pretrained=weights, **kw)
            built["cfg"] = model.pretrained_cfg  # the builder replaces it by timm's
            # Every level by default: timm's (0, 1, 2, 3, 4) assumes five, these models have 3 to 5. The builder
            # puts a caller's out_indices in this dict before building and wraps the model with it after.
            if feature_cfg["out_indices"] is None:
                feature_cfg["out_indices"] = tuple(range(len(model.feature_info)))
            return model

        model = build_model_with_cfg(
            build, name, pretrained=False, pretrained_cfg=resolved, feature_cfg=feature_cfg, **kwargs
        )
        # timm's fields and compactnets', with the normalisation in timm's terms (0-1 pixels; the same function)
        own_cfg = built["cfg"] | _timm_normalisation(built["cfg"]) | {"pixel_range": 1.0}
        if own_cfg["channel_order"] != "RGB":
            own_cfg["notes"] = f"{bgr_warning(tagged)} {own_cfg['notes']}".strip()
            warnings.warn(bgr_warning(tagged), UserWarning, stacklevel=3)
        cfg = {**resolved, **own_cfg}
        built["model"].pretrained_cfg = built["model"].default_cfg = cfg
        if model is not built["model"]:  # a feature extractor: no head fields, as timm's pretrained_cfg_for_features
            model.pretrained_cfg = model.default_cfg = {
                k: v for k, v in cfg.items() if k not in ("num_classes", "classifier", "global_pool")
            }
        return model

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"compactnets model {name!r}."
    return fn


def register_all() -> list[str]:
    """Register every compactnets model with timm; names timm already uses are left to timm."""
    from timm.models import generate_default_cfgs, is_model, register_model

    from .models import list_models, pretrained_tags

    registered = []
    for name in list_models():
        if is_model(name) and name not in default_cfgs:
            continue
        cfgs = {}
        for tag, cfg in pretrained_tags(name).items():
            key = f"{name}.{tag}" if tag else name
            cfgs[key] = timm_cfg(key, cfg)
        default_cfgs.update(generate_default_cfgs(cfgs))
        register_model(_entrypoint(name))
        registered.append(name)
    return registered


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Runs register_all once timm's package has executed: the spec it hands out is timm's own, found by the
    other finders, with the loader's exec_module wrapped. It leaves ``sys.meta_path`` only when timm runs, as a
    spec asked for and never executed (``importlib.util.find_spec('timm')``, how libraries test that timm is
    installed) must not use up the hook."""

    def __init__(self):
        self._finding = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm" or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module  # a loader made for this spec alone

        def exec_and_register(module):
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            exec_module(module)
            register_all()

        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    if "timm" in sys.modules:
        register_all()
    elif importlib.util.find_spec("timm") is not None:
        sys.meta_path.insert(0, _AfterTimmImport())

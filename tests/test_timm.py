"""timm registration in both import orders, and after a find_spec probe of timm (fresh interpreters)."""

import subprocess
import sys

import pytest

pytest.importorskip("timm")

CHECK = """
import torch, timm
model = timm.create_model('nin_xnornet', num_classes=0)
assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 192)
assert 'nin_gc_xnornet' in timm.list_models('nin*')
cfg = timm.data.resolve_model_data_config(timm.create_model('nin'))
assert cfg['input_size'] == (3, 32, 32) and cfg['crop_pct'] == 1.0, cfg
print('ok')
"""


@pytest.mark.parametrize(
    "first",
    [
        "import compactnets, timm",
        "import timm, compactnets",
        # how libraries test that timm is installed: a spec found but not executed leaves the hook in place
        "import compactnets, importlib.util; assert importlib.util.find_spec('timm'); import timm",
    ],
)
def test_models_are_registered_in_timm(first):
    result = subprocess.run([sys.executable, "-c", first + "\n" + CHECK], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_import_without_timm_use_does_not_import_timm():
    code = "import sys, compactnets; assert 'timm' not in sys.modules; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]

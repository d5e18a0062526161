"""Profiler: the XNOR README's figures to the last digit, honest FlopCounterMode counts, binary MACs, sizes."""

import json

import pytest
import torch

import compactnets
from compactnets.counting import flop_counter_macs, ptflops_macs
from compactnets.profiler import Figure, count_params, profile_model

# xnor-net.md section 3: ptflops MACs and params of the official code.
PTFLOPS = {
    "nin": (225_160_320, 969_822),
    "nin_gc": (196_873_344, 722_462),
    "nin_xnornet": (17_255_552, 674_910),
    "nin_gc_xnornet": (24_710_272, 589_854),
    "nin_k3": (149_662_848, 674_910),
    "nin_gc_k3": (163_318_912, 591_390),
}
SEED_TABLE = {  # the README rows, as printed
    "nin": ("969.82 k", "0.23 GMac"),
    "nin_gc": ("722.46 k", "0.2 GMac"),
    "nin_xnornet": ("674.91 k", "17.26 MMac"),
    "nin_gc_xnornet": ("589.85 k", "24.71 MMac"),
}


@pytest.mark.parametrize("name", sorted(PTFLOPS))
def test_ptflops_convention_reproduces_the_official_counts(name):
    p = profile_model(name)
    assert p.convention == "ptflops"
    assert (p.convention_macs, p.params) == PTFLOPS[name]


@pytest.mark.parametrize("name", sorted(SEED_TABLE))
def test_published_figures_match_to_the_last_digit(name):
    row = profile_model(name).as_dict()
    assert (row["params_as_published"], row["macs_as_published"]) == SEED_TABLE[name]
    assert (row["published_params"], row["published_macs"]) == SEED_TABLE[name]


def test_binary_macs_are_split_from_full_precision():
    p = profile_model("nin_xnornet")
    # conv0 5x5 3->192 at 32x32 and conv10 1x1 192->10 at 8x8 stay fp; blocks 1-7 are binary (xnor-net.md 3)
    assert p.fp_macs == 14_745_600 + 122_880
    assert p.binary_macs == 132_120_576
    assert p.macs == p.fp_macs + p.binary_macs
    assert profile_model("nin_k3").binary_macs == 0
    assert profile_model("nin_k3").macs == p.macs  # same convs, full precision


def test_one_bit_size():
    p = profile_model("nin_xnornet")
    model = compactnets.create_model("nin_xnornet")
    binary_weights = sum(m.conv.weight.numel() for m in model.sequential if hasattr(m, "binarize"))
    alphas = sum(m.conv.out_channels for m in model.sequential if hasattr(m, "binarize"))
    assert p.size_fp32_bytes == 4 * 674_910
    assert p.size_1bit_bytes == 4 * (674_910 - binary_weights + alphas) + binary_weights // 8


def test_flop_counter_sees_functional_and_shared_convs():
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.pretrained_cfg = {"input_size": (4, 8, 8)}

        def forward(self, x):
            x = self.conv(self.conv(x))  # one tensor, two calls
            return torch.nn.functional.conv2d(x, self.conv.weight, padding=1)  # functional call

    model = Shared()
    per_call = 4 * 4 * 9 * 64
    assert flop_counter_macs(model, torch.zeros(1, 4, 8, 8))[0] == 3 * per_call
    assert ptflops_macs(model, torch.zeros(1, 4, 8, 8)) == 2 * per_call  # hooks miss the functional call
    assert count_params(model) == 4 * 4 * 9


def test_ptflops_library_agrees_when_installed():
    ptflops = pytest.importorskip("ptflops")
    for name in ("nin", "nin_xnornet", "nin_gc_xnornet"):
        model = compactnets.create_model(name).eval()
        kwargs = {"backend": "pytorch", "backend_specific_config": {"count_functional": False}}
        macs, params = ptflops.get_model_complexity_info(
            model, (3, 32, 32), as_strings=False, print_per_layer_stat=False, verbose=False, **kwargs
        )
        assert (macs, params) == PTFLOPS[name]


@pytest.mark.parametrize(
    "text,value,shown",
    [("0.23 GMac", 225_160_320, "0.23 GMac"), ("969.82 k", 969_822, "969.82 k"), ("1.4M", 1_367_840, "1.4M"),
     ("41M", 40_476_448, "40M"), ("0.10G", 96_994_560, "0.10G"), (1019590, 1019590, "1,019,590")],
)  # fmt: skip
def test_figure_format_mimics_the_published_text(text, value, shown):
    figure = Figure.parse(text)
    assert figure.format_like(value) == shown
    assert figure.matches(value) == (shown == figure.text)  # "41M" -> "40M" is a mismatch


def test_cli_profile_prints_the_seed_rows(run_cli):
    status, out, _ = run_cli("profile", "--family", "xnor-net")
    assert status == 0
    for name, (params, macs) in SEED_TABLE.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert line.split("  ")[0].strip() == name
        assert line.count(params) == 2 and line.count(macs) == 2, line  # measured and published
        assert line.count(" match ") == 2, line


def test_cli_profile_json_and_layers(run_cli):
    status, out, _ = run_cli("profile", "nin_xnornet", "--json", "--convention", "flop_counter")
    row = json.loads(out)[0]
    assert status == 0 and row["convention_macs"] == row["macs"] == 146_989_056
    assert row["published_macs"] is None  # published with another convention: not compared
    status, out, _ = run_cli("profile", "nin_xnornet", "--layers")
    assert "sequential.4.conv" in out and "42,467,328" in out

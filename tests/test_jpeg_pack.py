"""tools/jpeg_pack.py: a folder of JPEGs packed with each distinct header once comes back byte for byte, and a pack
is untrusted input (a changed byte, a path climbing out, a destination in use: one line, exit 2, nothing written)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
spec = importlib.util.spec_from_file_location("jpeg_pack", ROOT / "tools" / "jpeg_pack.py")
jpeg_pack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(jpeg_pack)


@pytest.fixture
def folder(tmp_path) -> Path:
    """An ImageFolder of JPEGs at two sizes and qualities (three distinct headers), and a file that is no JPEG."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(12):
        size, quality = ((32, 75), (32, 90), (40, 75))[i % 3]
        path = root / ("train" if i < 8 else "test") / f"class{i % 2}" / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=quality)
    (root / "README.md").write_text("where the images come from\n")
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_packed_folder_comes_back_byte_for_byte(folder, tmp_path):
    n, size, packed = jpeg_pack.pack(folder, tmp_path / "data.npz")
    assert (n, size) == (13, sum(map(len, _files(folder).values())))
    with np.load(tmp_path / "data.npz", allow_pickle=False) as z:
        assert len(z["header_ends"]) == 3 and (z["header_of"] == jpeg_pack.WHOLE).sum() == 1  # README whole
        assert len(z["headers"]) + len(z["payload"]) == size - 9 * int(z["header_ends"][0])  # headers once each
    assert jpeg_pack.unpack(tmp_path / "data.npz", tmp_path / "back") == (13, size)
    assert _files(tmp_path / "back") == _files(folder)


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/cifar10 is not here")
def test_the_cifar10_jpegs_share_one_header_that_is_a_third_of_their_bytes():
    files = sorted(DATA.glob("test/airplane/*.jpg"))[:200]
    headers = {f.read_bytes()[: jpeg_pack.header_length(f.read_bytes())] for f in files}
    assert len(headers) == 1 and len(next(iter(headers))) == 623
    assert 623 / np.mean([f.stat().st_size for f in files]) > 0.6


def _rewrite(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {"payload": np.where(np.arange(len(a["payload"])) == 5, a["payload"] ^ 1, a["payload"])},
         "do not match its SHA-256"),
        (lambda a: {"paths": np.frombuffer(json.dumps(["../evil.jpg", *json.loads(a["paths"].tobytes())[1:]])
                                           .encode(), np.uint8)}, "refuses the path '../evil.jpg'"),
        (lambda a: {"paths": np.frombuffer(json.dumps(["/etc/x", *json.loads(a["paths"].tobytes())[1:]])
                                           .encode(), np.uint8)}, "refuses the path '/etc/x'"),
        (lambda a: {"payload_ends": a["payload_ends"] + 1}, "offsets do not fit"),
        (lambda a: {"header_of": a["header_of"] * 0 + 7}, "offsets do not fit"),
        (lambda a: {"paths": np.frombuffer(b"[1, 2", np.uint8)}, "not JSON"),
        (lambda a: {"version": np.int64(9)}, "pack version 9"),
    ],
)  # fmt: skip
def test_a_pack_that_is_not_what_it_says_is_refused_and_nothing_is_written(folder, tmp_path, capsys, change,
                                                                           message):  # fmt: skip
    pack = tmp_path / "data.npz"
    jpeg_pack.pack(folder, pack)
    with np.load(pack, allow_pickle=False) as z:
        _rewrite(pack, **change({k: z[k] for k in z.files}))
    with pytest.raises(SystemExit) as e:
        jpeg_pack.main(["unpack", str(pack), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_destination_in_use_or_a_file_that_is_no_pack_is_one_line(folder, tmp_path, capsys):
    jpeg_pack.pack(folder, tmp_path / "data.npz")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    (tmp_path / "notes.npz").write_text("no zip")
    for argv, message in [
        (["unpack", str(tmp_path / "data.npz"), str(tmp_path / "used")], "exists and is not an empty folder"),
        (["unpack", str(tmp_path / "notes.npz"), str(tmp_path / "new")], "not a pack"),
        (["pack", str(tmp_path / "absent"), str(tmp_path / "x.npz")], "not a folder"),
    ]:
        with pytest.raises(SystemExit) as e:
            jpeg_pack.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and err.count("\n") == 1, err
    assert _files(tmp_path / "used") == {"keep.txt": b"mine"} and not (tmp_path / "new").exists()

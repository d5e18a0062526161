"""Carry a folder of JPEGs in a fraction of its bytes, and write it back byte for byte.

A device machine takes at most 64 MiB of working tree, and ``../shared/data/cifar10`` does not travel with it:
60,000 JPEGs of 32x32 pixels, 919 bytes each on average, of which the first 623 are the same in every file (JFIF,
quantisation and Huffman tables, frame and scan headers: one encoder at one quality). ``pack`` keeps each distinct
header once and each file's entropy-coded rest (files that are no JPEG whole), with the SHA-256 of every path and
byte; ``unpack`` rebuilds the folder in memory, checks that digest, and only then writes it. CIFAR-10: about 57 MB
of JPEG bytes in a pack of about 19 MB.

    python tools/jpeg_pack.py pack ../shared/data/cifar10 gpu/cifar10.npz
    python tools/jpeg_pack.py unpack gpu/cifar10.npz /tmp/cifar10

A pack is untrusted input to ``unpack``: it is read without pickle, every offset is checked against the arrays, a
path that is absolute or climbs out of the destination is refused, and a destination that holds anything is left
alone. Any of these is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path, PurePosixPath

import numpy as np

VERSION = 1
WHOLE = -1  # header index of a file stored whole (not a JPEG this splits)


class PackError(Exception):
    """A pack or a destination that unpack refuses."""


def header_length(data: bytes) -> int:
    """The bytes of a JPEG up to the end of its first scan header (SOS), after which the entropy-coded data starts;
    0 where ``data`` is not a JPEG whose segments lead there."""
    if data[:2] != b"\xff\xd8":
        return 0
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if length < 2:
            return 0
        at += 2 + length
        if marker == 0xDA:
            return at if at <= len(data) else 0
    return 0


def digest(files: list[tuple[str, bytes]]) -> bytes:
    """SHA-256 of every path and its bytes, in order."""
    h = hashlib.sha256()
    for path, data in files:
        h.update(path.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.digest()


def _bytes(chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The chunks end to end, and where each ends."""
    ends = np.cumsum([len(c) for c in chunks], dtype=np.int64)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), ends


def pack(source: Path, out: Path) -> tuple[int, int, int]:
    """Writes the pack of every file under ``source``; returns (files, their bytes, the pack's bytes)."""
    if not source.is_dir():
        raise PackError(f"{source}: not a folder")
    files = [(p.relative_to(source).as_posix(), p.read_bytes()) for p in sorted(source.rglob("*")) if p.is_file()]
    if not files:
        raise PackError(f"{source}: no files")
    headers: dict[bytes, int] = {}
    header_of, rests = [], []
    for _, data in files:
        n = header_length(data)
        header_of.append(headers.setdefault(data[:n], len(headers)) if n else WHOLE)
        rests.append(data[n:])
    header_bytes, header_ends = _bytes(list(headers))
    payload, payload_ends = _bytes(rests)
    paths = np.frombuffer(json.dumps([p for p, _ in files]).encode(), dtype=np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:  # a file object: np.savez_compressed would append .npz to another name
        np.savez_compressed(
            f, version=np.int64(VERSION), paths=paths, header_of=np.array(header_of, dtype=np.int64),
            headers=header_bytes, header_ends=header_ends, payload=payload, payload_ends=payload_ends,
            sha256=np.frombuffer(digest(files), dtype=np.uint8),
        )  # fmt: skip
    return len(files), sum(len(d) for _, d in files), out.stat().st_size


def _ends_ok(ends: np.ndarray, size: int) -> bool:
    return ends.ndim == 1 and (len(ends) == 0 or (ends[0] >= 0 and (np.diff(ends) >= 0).all() and ends[-1] == size))


def read_pack(path: Path) -> list[tuple[str, bytes]]:
    """The files of a pack, checked against its digest."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise PackError(f"{path}: not a pack ({e})") from None
    need = ("version", "paths", "header_of", "headers", "header_ends", "payload", "payload_ends", "sha256")
    if missing := [k for k in need if k not in arrays]:
        raise PackError(f"{path}: not a pack (no {', '.join(missing)})")
    if int(arrays["version"]) != VERSION:
        raise PackError(f"{path}: pack version {int(arrays['version'])}, this tool reads {VERSION}")
    try:
        paths = json.loads(arrays["paths"].astype(np.uint8).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PackError(f"{path}: its path list is not JSON") from None
    header_of, header_ends, payload_ends = (arrays[k].astype(np.int64) for k in ("header_of", "header_ends",
                                                                                   "payload_ends"))  # fmt: skip
    headers, payload = arrays["headers"].astype(np.uint8).tobytes(), arrays["payload"].astype(np.uint8).tobytes()
    n = len(paths) if isinstance(paths, list) else -1
    if (
        n < 1 or header_of.shape != (n,) or payload_ends.shape != (n,) or not _ends_ok(payload_ends, len(payload))
        or not _ends_ok(header_ends, len(headers)) or ((header_of < WHOLE) | (header_of >= len(header_ends))).any()
    ):  # fmt: skip
        raise PackError(f"{path}: its offsets do not fit its arrays")
    header_starts = np.concatenate([[0], header_ends[:-1]])
    files, start = [], 0
    for name, h, end in zip(paths, header_of.tolist(), payload_ends.tolist(), strict=True):
        parts = PurePosixPath(name).parts if isinstance(name, str) else ()
        if not parts or PurePosixPath(name).is_absolute() or any(p in ("", ".", "..") for p in parts):
            raise PackError(f"{path}: refuses the path {name!r} (absolute, empty or climbing out)")
        head = headers[header_starts[h] : header_ends[h]] if h != WHOLE else b""
        files.append((name, head + payload[start:end]))
        start = end
    if digest(files) != arrays["sha256"].astype(np.uint8).tobytes():
        raise PackError(f"{path}: the files it rebuilds do not match its SHA-256")
    return files


def unpack(path: Path, dest: Path) -> tuple[int, int]:
    """Writes the files of a pack under ``dest`` (absent or empty); returns (files, bytes)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise PackError(f"{dest}: exists and is not an empty folder (nothing written)")
    files = read_pack(path)
    for name, data in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return len(files), sum(len(d) for _, d in files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("pack", help="a folder -> a pack")
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    u = verbs.add_parser("unpack", help="a pack -> a folder (absent or empty)")
    u.add_argument("pack", type=Path)
    u.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.verb == "pack":
            n, size, packed = pack(args.source, args.out)
            print(f"{args.out}: {n:,} files, {size:,} bytes in {packed:,} ({packed / size:.0%})")
        else:
            n, size = unpack(args.pack, args.dest)
            print(f"{args.dest}: {n:,} files, {size:,} bytes, SHA-256 checked")
    except PackError as e:
        print(f"jpeg_pack: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

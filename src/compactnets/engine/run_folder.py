"""The run folder (``--output``): one run at a time holds it, through a lock file naming the holder."""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
from datetime import datetime
from pathlib import Path

from ..checkpoint import orphan_temporaries
from ..errors import OptionError


def read_log(path: Path, upto_epoch: int | None = None) -> list[dict]:
    """The rows of a run's log.csv (strings, as written), up to ``upto_epoch``; none when there is no log yet."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if upto_epoch is None or int(row["epoch"]) <= upto_epoch]


def resume_checkpoint_path(resume: str) -> Path:
    path = Path(resume)
    return path / "last.pth" if path.is_dir() else path


VIEWS_FILE = "views.json"  # the weights measured each way (EMA or raw, running or re-estimated BN), per epoch
RUN_FILES = ("last.pth", "best.pth", "log.csv", "args.json", VIEWS_FILE)  # checkpoints first


def _view_entries(out: Path) -> list[dict]:
    path = out / VIEWS_FILE
    return json.loads(path.read_text())["epochs"] if path.is_file() else []


def views_by_epoch(out: Path) -> dict[int, dict[tuple[str, str], dict]]:
    """The views a run measured, per epoch, each keyed ``(weights, bn)``; none if it measured none."""
    return {e["epoch"]: {(v["weights"], v["bn"]): v for v in e["views"]} for e in _view_entries(out)}


def write_views(out: Path, epoch: int, views: list[dict]) -> None:
    """Add the views measured after ``epoch``; those of later epochs (written before a resume) are dropped."""
    entries = [e for e in _view_entries(out) if e["epoch"] < epoch] + [{"epoch": epoch, "views": views}]
    tmp = out / f".{VIEWS_FILE}.tmp"
    tmp.write_text(json.dumps({"epochs": entries}, indent=2) + "\n")
    os.replace(tmp, out / VIEWS_FILE)


def segment(epoch: int, step: int, device: str, precision: str | None, compiled: bool) -> dict:
    """One process of a run, as ``segments`` of its options records it: where it started and how it trained."""
    return {"epoch": epoch, "step": step, "device": device, "precision": precision, "compiled": compiled}


def trained_on(options: dict) -> list[dict]:
    """Where and how each process of a run trained (``segments`` of its options): the epochs done and the step
    it started from, the device, the precision and whether the forward was compiled. A run recorded before
    segments were: one segment, from its options (those of its last process)."""
    if options.get("segments"):
        return list(options["segments"])
    if not options.get("device_resolved"):
        return []
    return [segment(0, 0, options["device_resolved"], options.get("amp_resolved"), bool(options.get("compile")))]


def stretches(options: dict, epochs_run: int, field: str) -> list[tuple[object, int, int]]:
    """The run's epochs grouped by one ``field`` of its segments: ``(value, first, last)`` per stretch alike,
    1-based and inclusive (an epoch split between two stretches is in both); a process that stopped before
    saving a step of its own (its successor starts where it did) is left out."""
    segments = trained_on(options)
    out: list[tuple[object, int, int]] = []
    for i, segment in enumerate(segments):
        after = segments[i + 1] if i + 1 < len(segments) else None
        if after is not None and (after["epoch"], after["step"]) == (segment["epoch"], segment["step"]):
            continue
        first = segment["epoch"] + 1
        last = after["epoch"] + (1 if after["step"] else 0) if after is not None else epochs_run
        if out and out[-1][0] == segment[field]:
            out[-1] = (segment[field], out[-1][1], last)
        else:
            out.append((segment[field], first, last))
    return out


def stretches_in_words(options: dict, epochs_run: int, field: str, show=str) -> str | None:
    """One of how the run trained (device, precision, compiled) in words: the value, or, where a resume on
    another machine changed it, each value with its epochs ("A (epochs 1-29); B (epochs 29-60)")."""
    parts = stretches(options, epochs_run, field)
    if len(parts) <= 1:
        return show(parts[0][0]) if parts else None
    return "; ".join(f"{show(value)} (epochs {first}-{last})" for value, first, last in parts)


LOCK_FILE = ".lock"


class RunFolder:
    """The ``--output`` folder, held by one run at a time (a lock file naming the holder).

    A folder that holds another run is refused unless the run resumes it or ``--overwrite`` starts over (its
    run files are then removed); temporary checkpoint files that a killed run left behind are removed. A folder
    this run created is removed again when the run stops before writing anything into it (a bad option found
    after the folder was taken leaves no empty ``runs/<model>-<time>`` behind).
    """

    def __init__(self, out: Path, args: argparse.Namespace, is_main: bool):
        self.out, self.args, self.is_main, self.lock = out, args, is_main, out / LOCK_FILE
        self.created = False

    def __enter__(self) -> RunFolder:
        if not self.is_main:
            return self
        out = self.out
        if out.exists() and not out.is_dir():
            raise OptionError(f"--output {out} is a file, not a folder")
        self.created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OptionError(f"--output {out} cannot be created: {e.strerror or e}") from e
        if not os.access(out, os.W_OK | os.X_OK):
            raise OptionError(f"--output {out} is not writable")
        self._take_lock()
        resumes_here = self.args.resume and resume_checkpoint_path(self.args.resume).parent.resolve() == out.resolve()
        held = [name for name in RUN_FILES[:2] if (out / name).exists()]  # checkpoints: a run was trained here
        if held and not resumes_here and not self.args.overwrite:
            self._release()
            raise OptionError(
                f"--output {out} holds a run ({', '.join(held)}): continue it with --resume {out}, "
                "start over with --overwrite, or choose another folder"
            )
        if not resumes_here:  # starting over, or the files of a start that never finished an epoch
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        for tmp in orphan_temporaries(out):
            tmp.unlink(missing_ok=True)
        return self

    def _take_lock(self) -> None:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat()}
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._lock_is_stale():
                    raise OptionError(f"--output {self.out} is in use: {self._describe_holder()}") from None
                self.lock.unlink(missing_ok=True)  # its process is gone (killed): take over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(holder, f)
            return
        raise OptionError(f"--output {self.out}: cannot take the lock file {self.lock}")

    def _holder(self) -> dict:
        try:
            return json.loads(self.lock.read_text())
        except (OSError, ValueError):
            return {}

    def _describe_holder(self) -> str:
        h = self._holder()
        return (
            f"run of pid {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('started', '?')} "
            f"(lock file {self.lock}; delete it if that run is gone)"
        )

    def _lock_is_stale(self) -> bool:
        h = self._holder()
        if h.get("host") != socket.gethostname() or not isinstance(h.get("pid"), int):
            return False  # another machine's process cannot be checked from here
        try:
            os.kill(h["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _release(self) -> None:
        if self._holder().get("pid") == os.getpid():
            self.lock.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        if self.is_main:
            self._release()
            if self.created and not any(self.out.iterdir()):
                self.out.rmdir()

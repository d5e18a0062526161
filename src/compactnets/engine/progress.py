"""Progress over the batches of a loader: a tqdm bar on a terminal, periodic lines in a pipe or a log file."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """Wraps a loader. On a terminal, a tqdm bar; when stderr is a pipe or a file, one line every ``interval``
    batches (and at the last), so logs are not flooded with carriage returns. Silent when not ``enabled``
    (other ranks, ``--no-progress``)."""

    def __init__(self, enabled: bool, desc: str, interval: int = 50, stream=None):
        self.enabled, self.desc, self.interval = enabled, desc, max(1, interval)
        self.stream = stream or sys.stderr
        self.bar, self.values = None, {}

    def __call__(self, loader):
        if not self.enabled:
            return loader
        if self.stream.isatty():
            self.bar = tqdm(loader, desc=self.desc, leave=False, dynamic_ncols=True, file=self.stream)
            return self.bar
        return self._lines(loader)

    def _lines(self, loader):
        total = len(loader)
        for i, item in enumerate(loader):
            yield item
            if (i + 1) % self.interval == 0 or i + 1 == total:
                shown = "".join(f"  {k} {v:.3f}" for k, v in self.values.items())
                print(f"{self.desc}: {i + 1}/{total}{shown}", file=self.stream, flush=True)

    def postfix(self, **values) -> None:
        self.values = values
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})

"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM (a session, a scheduler or ``kill`` ending it).

Inside the training steps a signal is deferred to the end of the current step: the loop then writes a mid-epoch
checkpoint and raises :class:`TrainingInterrupted`, so nothing trained is lost. Anywhere else (setting up,
evaluating) it interrupts at once and the last checkpoint written is the one to resume from; so does a second
signal while the first is pending. Under torchrun every rank gets the signal at a different step, and saving
would need agreement between them: there the signal interrupts at once, as before.
"""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """A stop signal ended the run; ``exit_status`` is the shell's convention, 128 + the signal number."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or signal.Signals(signum).name)
        self.signum = signum
        self.exit_status = 128 + signum


class StopSignals:
    """Context manager installing the handlers; ``requested`` is the deferred signal number, if any."""

    def __init__(self, defer: bool = True):
        self.defer, self.requested, self._deferring, self._previous = defer, None, False, {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        if self._deferring and self.requested is None:
            self.requested = signum
            return
        raise TrainingInterrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        """Signals arriving inside wait for the caller to check ``requested``."""
        self._deferring = self.defer
        try:
            yield self
        finally:
            self._deferring = False

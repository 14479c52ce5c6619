"""SIGINT and SIGTERM as an exception that says what they stopped.

`cli.main` installs `raise_interrupted` for both signals; the exception unwinds every `with` block (an
artifact writer then discards its staging files), and the step that was running names itself on the way
out (`interruptible`). The CLI maps it to the shell's convention, 128 + the signal number: 130 for SIGINT,
143 for SIGTERM, so `recloop step ingest && recloop step validate` stops after an interrupted step.

It derives from BaseException, like KeyboardInterrupt, so `except Exception` blocks do not swallow it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM; `activity` names what it stopped, when known."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.activity: str | None = None
        self.run_id: str | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        what = self.activity or "the command"
        if self.run_id:
            return (
                f"interrupted by {name} during {what} (run {self.run_id}); nothing it had not committed was "
                f"kept: rerun with --run-id {self.run_id} to resume"
            )
        return f"interrupted by {name} during {what}; nothing it had not committed was kept"


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def saved_handlers() -> Callable[[], None]:
    """The function that puts the current SIGINT and SIGTERM handlers back."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def install() -> None:
    """Turn SIGTERM, and SIGINT unless the parent ignores it (a `cmd &` job), into `Interrupted`.
    Call it inside the `try` that catches `Interrupted`: a signal may arrive as soon as a handler is set."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    signal.signal(signal.SIGTERM, raise_interrupted)
    if not ignored:
        signal.signal(signal.SIGINT, raise_interrupted)


def ignore() -> None:
    """Ignore SIGINT and SIGTERM from here on: the process is exiting with a decided exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def interruptible(activity: str, run_id: str) -> Iterator[None]:
    """Name what runs inside, for the message of an interrupt that stops it (the innermost name wins)."""
    try:
        yield
    except Interrupted as exc:
        if exc.activity is None:
            exc.activity, exc.run_id = activity, run_id
        raise


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (an artifact commit), then deliver them.

    At the Python level, not with pthread_sigmask: a process signal reaches whichever thread does not
    block it (the store's upload threads), and CPython then runs the handler in the main thread anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread, which is also the only one they run in
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])  # now handled as it would have been: Interrupted, or the default

"""Progress bars for long work: tqdm on a terminal's stderr; a few plain lines in a notebook; or nothing.

In a Jupyter kernel (a notebook run by hand or by papermill) a redrawn bar becomes hundreds of lines of saved
output, so there the bar prints one line when it starts and then at most one every :data:`NOTEBOOK_INTERVAL`
seconds, and one when it ends. Kernels (CSPA, path patching) called from inside an analysis show their own bars
only within :func:`kernel_bars` (what ``circuittrack heads`` uses); a sweep shows one bar per checkpoint.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time

#: Seconds between the lines a bar prints in a notebook.
NOTEBOOK_INTERVAL = 30.0

_KERNEL_BARS = contextvars.ContextVar("circuittrack_kernel_bars", default=False)


def progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "it", position: int | None = None):
    """A bar with the time left, or an object with the same ``update``/``close`` that prints nothing.
    ``position``: the terminal line (worker processes each draw on their own line below the main bar)."""
    if not enabled:
        return _NoBar()
    if in_notebook():
        return _LineBar(total, desc, unit) if total != 0 else _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, position=position)


def in_notebook() -> bool:
    """True inside a Jupyter kernel whose stderr is not a terminal."""
    return "ipykernel" in sys.modules and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


@contextlib.contextmanager
def kernel_bars(on: bool = True):
    """Within this block, the kernels that analyses call draw their own progress bars."""
    token = _KERNEL_BARS.set(on)
    try:
        yield
    finally:
        _KERNEL_BARS.reset(token)


def kernel_bars_on() -> bool:
    return _KERNEL_BARS.get()


class _LineBar:
    """A bar for saved notebook output: a start line, a line at most every NOTEBOOK_INTERVAL seconds, an end line."""

    def __init__(self, total: int | None, desc: str, unit: str):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.t0 = self.last = time.monotonic()
        self.postfix = ""
        self._print("started")

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if now - self.last >= NOTEBOOK_INTERVAL:
            self.last = now
            self._print(self._eta(now))

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.t0 is not None:
            self._print(f"done in {time.monotonic() - self.t0:.0f} s")
            self.t0 = None

    def _eta(self, now: float) -> str:
        if not self.total or not self.n:
            return f"{now - self.t0:.0f} s so far"
        left = (now - self.t0) / self.n * max(0, self.total - self.n)
        return f"about {left:.0f} s left"

    def _print(self, what: str) -> None:
        of = f"/{self.total}" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}s{extra}, {what}", file=sys.stderr, flush=True)


class _NoBar:
    n = 0
    total = None

    def update(self, k: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

"""Progress bars for long work (tqdm on stderr), or a silent stand-in when they are off."""

from __future__ import annotations


def progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "it", position: int | None = None):
    """A tqdm bar with the time left, or an object with the same ``update``/``close`` that prints nothing.
    ``position``: the terminal line (worker processes each draw on their own line below the main bar)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, position=position)


class _NoBar:
    def update(self, k: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

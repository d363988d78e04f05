"""Claims: two sweeps on one store never compute the same job.

Before a run computes a job it *claims* it: it creates ``<store>/.claims/<key>.json`` atomically (``O_CREAT |
O_EXCL``: of several runs trying at once exactly one succeeds), holding who took it (pid, host, the process's start
time, so a reused pid is not mistaken for the owner) and when. The claim goes when the job is stored or has failed
(and on any exception, Ctrl-C included). A run that finds a job claimed skips it, unless the claim is *stale*:

- its owner is on this host and that process is gone (or is another process with the same pid);
- its owner is on another host and has not refreshed it for ``CIRCUITTRACK_CLAIM_TIMEOUT`` seconds (default 900):
  owners touch their claims from a heartbeat thread while they work, so a long job on a cluster node keeps its
  claim;
- it cannot be read (garbage) and is older than a few seconds (a claim being written is briefly empty).

A stale claim is taken over without races: the run taking it over first creates ``<key>.json.takeover``
(``O_EXCL``: one run at a time; the others treat the job as claimed), looks at the claim again, renames it to a
unique name, checks that the renamed file is the very one judged stale (else puts it back), and claims the job with
``O_EXCL`` again (which a run claiming the now free job normally can win instead: still one owner). The same
process identity names half-written job directories (:func:`owner_tag`), so a run removes only those whose writer
is gone.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from circuittrack.errors import InvalidInput

CLAIMS_DIR = ".claims"
DEFAULT_TIMEOUT = 900.0
HEARTBEAT = 60.0
GARBAGE_GRACE = 5.0  # seconds an unreadable claim file is left alone (it may be being written)


def claim_timeout() -> float:
    """Seconds after which another host's claim that was not refreshed is stale (``CIRCUITTRACK_CLAIM_TIMEOUT``)."""
    text = os.environ.get("CIRCUITTRACK_CLAIM_TIMEOUT")
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidInput(f"CIRCUITTRACK_CLAIM_TIMEOUT must be a positive number of seconds, got {text!r} "
                           f"(default {DEFAULT_TIMEOUT:.0f})")
    return value


def hostname() -> str:
    return socket.gethostname() or "localhost"


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), which tells a
    process from a later one given the same pid; None where there is no /proc or no such process (a zombie, which
    has exited and waits to be reaped, counts as none)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces or parentheses itself
    fields = stat[stat.rfind(")") + 2:].split()
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return None
    return fields[19]  # field 3 (the state) is at 0, so field 22 is at 19


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` (started at ``start``, if known) still runs on this host."""
    if pid <= 0:
        return False
    if os.path.isdir("/proc/self"):
        now = process_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


_ME: tuple[int, str | None] | None = None


def _me() -> tuple[int, str | None]:
    global _ME
    if _ME is None or _ME[0] != os.getpid():  # a forked child is another process
        _ME = (os.getpid(), process_start(os.getpid()))
    return _ME


def owner_tag() -> str:
    """``<host>~<pid>~<start>``: who this process is, for names of what it writes (no ``-`` or ``/`` in it)."""
    pid, start = _me()
    host = "".join(c if c.isalnum() or c in "._" else "_" for c in hostname())
    return f"{host}~{pid}~{start or 0}"


def tag_is_gone(tag: str, age: float, timeout: float | None = None) -> bool:
    """Whether the writer named by an :func:`owner_tag` is gone: a dead process of this host, or another host's
    work older than the claim timeout. An unparseable tag counts as gone once older than the timeout."""
    timeout = claim_timeout() if timeout is None else timeout
    parts = tag.split("~")
    if len(parts) != 3 or not parts[1].isdigit():
        return age > timeout
    host, pid, start = parts
    me = "".join(c if c.isalnum() or c in "._" else "_" for c in hostname())
    if host != me:
        return age > timeout
    return not process_alive(int(pid), None if start == "0" else start)


def _create(path: Path, key: str) -> bytes | None:
    """Create ``path`` (``O_EXCL``) holding who this process is; its content, or None if it exists already."""
    pid, start = _me()
    body = json.dumps({"key": key, "pid": pid, "host": hostname(), "start": start, "taken": time.time(),
                       "token": uuid.uuid4().hex}).encode()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    return body


class Claims:
    """The claims one run holds on jobs of one store; a context manager that refreshes them from a heartbeat
    thread while it is open and releases every one still held when it closes (whatever the exit)."""

    def __init__(self, root: str | Path, timeout: float | None = None, heartbeat: float | None = None):
        self.dir = Path(root) / CLAIMS_DIR
        self.timeout = claim_timeout() if timeout is None else float(timeout)
        self.heartbeat = min(HEARTBEAT, self.timeout / 4) if heartbeat is None else float(heartbeat)
        self.held: dict[str, bytes] = {}  # key -> the content written (tells our claim from a later one)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    # ----- taking and releasing ---------------------------------------------------------------------------
    def take(self, key: str) -> bool:
        """Claim job ``key``: True if this run now holds it, False if a live claim of another run does."""
        if key in self.held:
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        for _ in range(5):
            body = _create(path, key)
            if body is not None:
                with self._lock:
                    self.held[key] = body
                return True
            seen = self._look(path)
            if seen is None:  # gone meanwhile (released or taken over): try again
                continue
            if not self._stale(seen[1], seen[2]) or not self._remove_stale(path):
                return False
        return False  # others keep winning the race for it: it is theirs

    @staticmethod
    def _look(path: Path) -> tuple[int, bytes, float] | None:
        """(inode, content, mtime) of a claim file, None if it is not there."""
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                return st.st_ino, f.read(), st.st_mtime
        except FileNotFoundError:
            return None

    def _stale(self, content: bytes, mtime: float) -> bool:
        age = time.time() - mtime
        try:
            info = json.loads(content)
            pid, host = int(info["pid"]), str(info["host"])
            start = info.get("start")
        except (ValueError, KeyError, TypeError):
            return age > GARBAGE_GRACE
        if host == hostname():
            return not process_alive(pid, None if start is None else str(start))
        return age > self.timeout

    def _remove_stale(self, path: Path) -> bool:
        """Remove the claim file at ``path`` if it is stale, one run at a time; True if it is gone now, False if it
        is live (or another run is taking it over)."""
        lock = path.with_name(path.name + ".takeover")
        if not self._lock_takeover(lock):
            return False
        try:
            seen = self._look(path)  # again, now that no other run can be moving it
            if seen is None:
                return True
            ino, content, mtime = seen
            if not self._stale(content, mtime):
                return False
            grave = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
            try:
                os.rename(path, grave)
            except FileNotFoundError:
                return True
            try:
                moved = self._look(grave)
                if moved is not None and (moved[0], moved[1]) != (ino, content):  # not the one judged: put back
                    try:
                        os.link(grave, path)
                    except FileExistsError:  # pragma: no cover - claimed meanwhile: that claim stands
                        pass
                    return False
            finally:
                grave.unlink(missing_ok=True)
            return True
        finally:
            lock.unlink(missing_ok=True)

    def _lock_takeover(self, lock: Path) -> bool:
        """Take the lock on taking over one claim; a lock whose owner is gone (it died mid-takeover) is removed."""
        for _ in range(2):
            if _create(lock, "takeover") is not None:
                return True
            seen = self._look(lock)
            if seen is not None and not self._stale(seen[1], seen[2]):
                return False
            lock.unlink(missing_ok=True)
        return False

    def clear_stale(self) -> int:
        """Remove every stale claim of the store (e.g. one a killed run held on a job it had stored); returns how
        many. Leftovers of interrupted takeovers older than a few seconds go too."""
        try:
            entries = list(self.dir.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return 0
        removed = 0
        for entry in entries:
            if entry.name.endswith(".json"):
                seen = self._look(entry)
                if seen is not None and self._stale(seen[1], seen[2]) and self._remove_stale(entry):
                    removed += 1
            elif entry.name.endswith(".stale"):
                try:
                    if time.time() - entry.lstat().st_mtime > GARBAGE_GRACE:
                        entry.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
        return removed

    def release(self, key: str) -> None:
        """Give up the claim on ``key`` (if it is still this run's)."""
        with self._lock:
            body = self.held.pop(key, None)
        if body is None:
            return
        path = self.path(key)
        seen = self._look(path)
        if seen is not None and seen[1] == body:
            path.unlink(missing_ok=True)

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

    # ----- heartbeat ----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Touch every claim held, so other hosts see the owner is alive."""
        with self._lock:
            keys = list(self.held)
        for key in keys:
            try:
                os.utime(self.path(key))
            except FileNotFoundError:
                pass

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self.refresh()

    def __enter__(self) -> Claims:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="circuittrack-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.release_all()

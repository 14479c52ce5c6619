"""`file://` store: a directory on a local or mounted filesystem.

A write goes to a temporary file in the target directory that is fsynced and renamed into place.
`put_if_match` holds an flock(2) on a lock file (released by the kernel if the writer dies) while it checks
the version and replaces the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from recloop.errors import ConflictError, StoreError
from recloop.store import base as store_base  # read at call time: tests shorten the waits
from recloop.store.base import CHUNK, LOCK_PREFIX, ObjectInfo, clean_key, clean_prefix


def process_umask() -> int:
    """This process's umask, read without changing it (Linux: /proc/self/status; elsewhere set and reset)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class FileStore:
    """A directory on a local or mounted filesystem."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.base = Path(root[len("file://") :] if root.startswith("file://") else root)

    def uri(self, key: str) -> str:
        return f"{self.root}/{clean_key(key)}"

    def _path(self, key: str) -> Path:
        return self.base / clean_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def browser_url(self, key: str, expires_s: int) -> str:
        """A file:// URL a browser on this machine opens (`expires_s` does not apply)."""
        return self._path(key).resolve().as_uri()

    def _atomic_write(self, key: str, writer: Callable[[IO[bytes]], object]) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        except OSError as exc:
            raise StoreError(f"cannot write {self.uri(key)}: {exc.strerror or exc}") from None
        try:
            # mkstemp makes the file 0600; give it the mode any new file gets here (0666 less the umask),
            # so workers under another uid in the same group can read the store.
            os.fchmod(fd, 0o666 & ~process_umask())
            with os.fdopen(fd, "wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def put_file(self, key: str, path: str | Path) -> None:
        def copy(f: IO[bytes]) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, CHUNK)

        self._atomic_write(key, copy)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(key)} does not exist") from None

    def get_file(self, key: str, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(key)} does not exist") from None
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> ObjectInfo | None:
        p = self._path(key)
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(clean_key(key), st.st_size, f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}")

    def list(self, prefix: str = "") -> list[str]:
        prefix = clean_prefix(prefix)
        start = self.base / prefix if prefix else self.base
        if not start.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-") or name.startswith(LOCK_PREFIX):
                    continue
                out.append(Path(dirpath, name).relative_to(self.base).as_posix())
        return sorted(out)

    def move(self, src: str, dest: str) -> None:
        target = self._path(dest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._path(src), target)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(src)} does not exist") from None
        except OSError as exc:
            raise StoreError(f"cannot move {self.uri(src)} to {self.uri(dest)}: {exc.strerror or exc}") from None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        if prefix.strip("/"):
            shutil.rmtree(self.base / clean_prefix(prefix), ignore_errors=True)
        return len(keys)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        """Write only if the object's current etag equals `etag` (None: only if it does not exist)."""
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot write {self.uri(key)}: {exc.strerror or exc}") from None
        fd = self._lock(dest.parent / f"{LOCK_PREFIX}{dest.name}", key)
        try:
            current = self.stat(key)
            if (current.etag if current else None) != etag:
                raise ConflictError(
                    f"{self.uri(key)} changed since it was read (expected version {etag}, "
                    f"found {current.etag if current else 'none'}); read it again and retry"
                )
            self.put_bytes(key, data)
            new = self.stat(key)
            assert new is not None
            return new.etag
        finally:
            # Unlink while still holding the lock: a waiter that opened the old file sees the inode change.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest.parent / f"{LOCK_PREFIX}{dest.name}")
            os.close(fd)

    def _lock(self, lock: Path, key: str) -> int:
        """An exclusive flock on `lock` (the kernel drops it if this process dies: no stale locks)."""
        deadline = time.monotonic() + store_base.LOCK_WAIT_S
        delay = 0.005
        while True:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"timed out after {store_base.LOCK_WAIT_S:g} s waiting for another writer's "
                        f"lock on {self.uri(key)}; retry when it has finished"
                    ) from None
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 0.1)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # the previous holder unlinked it after we opened it: lock the new one

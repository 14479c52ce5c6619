"""What every artifact store shares: the `ArtifactStore` interface, key rules, and helpers over any store.

Keys are '/'-separated paths relative to the store root (`runs/r1/ingest/items.parquet`). Writes are
whole-object, so readers never see half a file (see `file.py` and `s3.py` for how each backend does it).
`put_if_match` is a compare-and-swap on one small object (the production alias); both backends guard it
with a hidden `.lock-<name>` object next to the key, which `list` never returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CHUNK = 8 * 1024 * 1024
LOCK_PREFIX = ".lock-"  # hidden lock objects next to a compare-and-swap key
LOCK_WAIT_S = 30.0  # how long put_if_match waits for another writer's lock
LOCK_LEASE_S = 60.0  # an S3 lock older than this belongs to a crashed writer and may be broken


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # a version token for compare-and-swap


class ArtifactStore(Protocol):
    root: str

    def uri(self, key: str) -> str: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_file(self, key: str, path: str | Path) -> None: ...
    def get_file(self, key: str, path: str | Path) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def stat(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def move(self, src: str, dest: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str: ...
    def local_path(self, key: str) -> Path | None: ...
    def browser_url(self, key: str, expires_s: int) -> str: ...


def clean_key(key: str) -> str:
    """`key` without leading/trailing '/'; ValueError for empty, '.' or '..' parts."""
    key = key.strip("/")
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid store key {key!r}: use non-empty '/'-separated names without '.' or '..'")
    return key


def clean_prefix(prefix: str) -> str:
    """A cleaned key prefix ending in '/', or '' for the whole store."""
    prefix = prefix.strip("/")
    return clean_key(prefix) + "/" if prefix else ""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a local file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def local_copy(store: ArtifactStore, key: str, workdir: str | Path | None = None) -> Iterator[Path]:
    """A local path to read `key` from: the file itself for file://, a temporary download for s3://."""
    direct = store.local_path(key)
    if direct is not None:
        if not direct.is_file():
            raise FileNotFoundError(f"{store.uri(key)} does not exist")
        yield direct
        return
    with tempfile.TemporaryDirectory(dir=workdir, prefix="recloop-get-") as tmp:
        yield store.get_file(key, Path(tmp) / Path(key).name)

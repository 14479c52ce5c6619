"""Artifact store: one interface (`ArtifactStore`) over `file://` and `s3://` roots.

`open_store` is the one way to open a store URI: it takes the config's `store` section, whose endpoint,
region and credentials apply to any `s3://` root, the configured one or another (`root=`, e.g. a bucket
named by a data path). `base` holds the interface and helpers, `file` and `s3` the two backends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recloop.errors import StoreError
from recloop.store.base import ArtifactStore, ObjectInfo, local_copy, sha256_file
from recloop.store.file import FileStore
from recloop.store.s3 import S3Store, s3_client, with_retries

if TYPE_CHECKING:
    from recloop.config import StoreConfig

__all__ = [
    "ArtifactStore",
    "FileStore",
    "ObjectInfo",
    "S3Store",
    "local_copy",
    "open_store",
    "s3_client",
    "sha256_file",
    "with_retries",
]


def open_store(cfg: StoreConfig, root: str | None = None) -> ArtifactStore:
    """The store at `root` (default: `cfg.root`), with `cfg`'s endpoint, region, credentials and retries."""
    root = (root or cfg.root).rstrip("/")
    if root.startswith("file://"):
        return FileStore(root)
    if root.startswith("s3://"):
        # model_copy(update=...) skips validation: the root is re-checked here instead.
        if not root[len("s3://") :].split("/", 1)[0]:
            raise StoreError(f"store root {root!r} names no bucket: use s3://bucket or s3://bucket/prefix")
        return S3Store(cfg if root == cfg.root else cfg.model_copy(update={"root": root}))
    raise StoreError(f"unsupported store root {root!r}: use file:// or s3://")

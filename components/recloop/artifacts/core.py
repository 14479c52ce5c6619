"""Artifacts: folders in the store committed by a `_MANIFEST.json` written last.

A writer stages its files under `_staging/{folder}/{token}/`, outside every artifact folder, and leaves the
folder as it found it until its `with` block succeeds. Then it commits: the staged manifest is written
beside the staged files (the record that a commit is under way), the folder's old manifest goes first (the
old artifact stops existing for readers), then the old files, the staged files move in, and the new
manifest is written last, with each file's sha256 and size, row counts, schema, config hash, recloop
version and parent artifacts. SIGINT and SIGTERM wait until the commit is done. A failed or interrupted
writer deletes its staging folder; a killed one (SIGKILL) leaves it, and the next writer of the folder
removes it. A folder without a manifest does not exist; a file whose hash differs from the manifest is
refused. Re-running a step with the same run id therefore never exposes a half-written artifact, and a
completed artifact is recognised and reused.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recloop import __version__, interrupts
from recloop.errors import ArtifactError
from recloop.store import ArtifactStore, local_copy, sha256_file

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "_MANIFEST.json"
# Work in progress: writers' staged files, and resume state such as the tune step's Optuna journal.
STAGING = "_staging"
_RUN_ID_RE = re.compile(r"[^A-Za-z0-9._\-]")


def safe_run_id(run_id: str) -> str:
    """A run id usable as one path segment ('manual__2026-01-01T00:00:00+00:00' -> 'manual__2026-01-01T00_00_00_00_00')."""
    cleaned = _RUN_ID_RE.sub("_", run_id.strip())
    if not cleaned or cleaned in (".", ".."):
        raise ValueError(f"invalid run id {run_id!r}")
    return cleaned


def run_prefix(run_id: str, step: str) -> str:
    return f"runs/{safe_run_id(run_id)}/{step}"


def staging_prefix(prefix: str) -> str:
    """Where work in progress for the folder `prefix` lives until it is committed."""
    return f"{STAGING}/{prefix.strip('/')}"


@dataclass
class FileEntry:
    sha256: str
    size: int
    rows: int | None = None
    schema: dict[str, str] | None = None


@dataclass
class Manifest:
    """The committed description of an artifact folder."""

    step: str
    run_id: str
    uri: str
    files: dict[str, FileEntry] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)
    config_hash: str | None = None
    # Fingerprint of what besides the config decides the content (run params, input manifests);
    # set by `run_step` through `StepContext.writer`, compared before reusing the artifact.
    reuse_key: str | None = None
    recloop_version: str = __version__
    created_at: str = ""

    def to_json(self) -> str:
        d = {
            "step": self.step,
            "run_id": self.run_id,
            "uri": self.uri,
            "created_at": self.created_at,
            "recloop_version": self.recloop_version,
            "config_hash": self.config_hash,
            "reuse_key": self.reuse_key,
            "parents": self.parents,
            "summary": self.summary,
            "files": {k: {kk: vv for kk, vv in vars(v).items() if vv is not None} for k, v in self.files.items()},
        }
        return json.dumps(d, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            d = json.loads(text)
            files = {k: FileEntry(**v) for k, v in d.pop("files", {}).items()}
            # Keys a newer recloop added are ignored, so old readers still open new artifacts.
            known = {f.name for f in fields(cls)} - {"files"}
            return cls(files=files, **{k: v for k, v in d.items() if k in known})
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"{where} is corrupt ({exc}); re-run the step that wrote it") from None

    def brief(self) -> dict[str, Any]:
        """What goes through XCom: the URI and small facts, never data."""
        return {"uri": self.uri, "step": self.step, "run_id": self.run_id, "summary": self.summary}


def frame_schema(df: pd.DataFrame) -> dict[str, str]:
    return {str(c): str(t) for c, t in df.dtypes.items()}


class ArtifactWriter:
    """Write one artifact folder; the manifest is committed only when the `with` block succeeds."""

    def __init__(
        self,
        store: ArtifactStore,
        prefix: str,
        step: str,
        run_id: str,
        config_hash: str | None = None,
        parents: list[str] | None = None,
        reuse_key: str | None = None,
    ):
        self.store = store
        self.prefix = prefix.strip("/")
        self.manifest = Manifest(
            step=step,
            run_id=run_id,
            uri=store.uri(self.prefix),
            parents=list(parents or []),
            config_hash=config_hash,
            reuse_key=reuse_key,
        )
        self._tmp: Path | None = None
        self._token = uuid.uuid4().hex[:12]
        # Every key an upload was started for, so a discard deletes them by name: a listing may not show
        # an object written a moment ago (seen on SeaweedFS under load).
        self._staged: list[str] = []

    @property
    def summary(self) -> dict[str, Any]:
        return self.manifest.summary

    def __enter__(self) -> ArtifactWriter:
        # A killed writer's staging: the folder is being rewritten, so it is garbage now.
        self.store.delete_prefix(staging_prefix(self.prefix))
        self._tmp = Path(tempfile.mkdtemp(prefix="recloop-put-"))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._commit()
            else:
                self._discard()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _commit(self) -> None:
        self.manifest.created_at = datetime.now(UTC).isoformat(timespec="seconds")
        manifest = self.manifest.to_json().encode()
        with interrupts.deferred():
            self.store.put_bytes(f"{self._staging}/{MANIFEST}", manifest)
            # Uncommit first, so no reader can pair the old manifest with new files; then drop stale files.
            self.store.delete(f"{self.prefix}/{MANIFEST}")
            for key in self.store.list(self.prefix):
                if key[len(self.prefix) + 1 :] not in self.manifest.files:
                    self.store.delete(key)
            for name in self.manifest.files:
                self.store.move(f"{self._staging}/{name}", f"{self.prefix}/{name}")
            self.store.put_bytes(f"{self.prefix}/{MANIFEST}", manifest)
            self.store.delete_prefix(staging_prefix(self.prefix))

    def _discard(self) -> None:
        # The folder was never touched; the staged files go. An unreachable store must not hide the
        # error that stopped the writer, and the next writer removes what is left.
        for key in self._staged:
            with contextlib.suppress(Exception):
                self.store.delete(key)
        with contextlib.suppress(Exception):
            self.store.delete_prefix(staging_prefix(self.prefix))

    @property
    def _staging(self) -> str:
        return f"{staging_prefix(self.prefix)}/{self._token}"

    def local(self, name: str) -> Path:
        """A scratch path to write `name` to before `add_file(name)` uploads it."""
        assert self._tmp is not None, "use ArtifactWriter in a with block"
        path = self._tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add_file(
        self, name: str, path: str | Path | None = None, rows: int | None = None, schema: dict[str, str] | None = None
    ) -> FileEntry:
        path = Path(path) if path is not None else self.local(name)
        entry = FileEntry(sha256=sha256_file(path), size=path.stat().st_size, rows=rows, schema=schema)
        self._staged.append(f"{self._staging}/{name}")
        self.store.put_file(f"{self._staging}/{name}", path)
        self.manifest.files[name] = entry
        return entry

    def put_bytes(self, name: str, data: bytes) -> FileEntry:
        path = self.local(name)
        path.write_bytes(data)
        return self.add_file(name, path)

    def put_json(self, name: str, obj: Any) -> FileEntry:
        return self.put_bytes(name, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def put_parquet(self, name: str, df: pd.DataFrame) -> FileEntry:
        path = self.local(name)
        df.to_parquet(path, index=False)
        return self.add_file(name, path, rows=len(df), schema=frame_schema(df))

    def add_dir(self, name: str, directory: str | Path) -> list[str]:
        """Upload every file below `directory` as `name/...`."""
        directory = Path(directory)
        added = []
        for p in sorted(directory.rglob("*")):
            if p.is_file():
                rel = f"{name}/{p.relative_to(directory).as_posix()}"
                self.add_file(rel, p)
                added.append(rel)
        return added


class Artifact:
    """A committed artifact folder, opened for reading with hash checks."""

    def __init__(self, store: ArtifactStore, prefix: str, manifest: Manifest):
        self.store = store
        self.prefix = prefix.strip("/")
        self.manifest = manifest

    @property
    def uri(self) -> str:
        return self.store.uri(self.prefix)

    @classmethod
    def open(cls, store: ArtifactStore, prefix: str) -> Artifact:
        prefix = prefix.strip("/")
        key = f"{prefix}/{MANIFEST}"
        try:
            text = store.get_bytes(key).decode()
        except FileNotFoundError:
            raise ArtifactError(
                f"{store.uri(prefix)} has no {MANIFEST}: the step that writes it has not completed; run it first"
            ) from None
        except UnicodeDecodeError:
            raise ArtifactError(f"{store.uri(key)} is corrupt (not UTF-8); re-run the step that wrote it") from None
        return cls(store, prefix, Manifest.from_json(text, store.uri(key)))

    @classmethod
    def exists(cls, store: ArtifactStore, prefix: str) -> bool:
        return store.exists(f"{prefix.strip('/')}/{MANIFEST}")

    def _entry(self, name: str) -> FileEntry:
        try:
            return self.manifest.files[name]
        except KeyError:
            raise ArtifactError(
                f"{self.uri} has no file {name!r} (it has: {', '.join(sorted(self.manifest.files))})"
            ) from None

    @contextlib.contextmanager
    def path(self, name: str) -> Iterator[Path]:
        """A verified local path to the file `name`."""
        entry = self._entry(name)
        with contextlib.ExitStack() as stack:
            # Only a missing stored file means "missing": errors from the caller's block pass through.
            try:
                p = stack.enter_context(local_copy(self.store, f"{self.prefix}/{name}"))
            except FileNotFoundError:
                raise ArtifactError(
                    f"{self.uri} lists {name!r} but the file is missing: it is being rewritten "
                    "or was deleted; re-run the step that wrote it"
                ) from None
            digest = sha256_file(p)
            if digest != entry.sha256:
                raise ArtifactError(
                    f"{self.store.uri(self.prefix + '/' + name)} does not match its manifest "
                    f"(sha256 {digest[:12]}… != {entry.sha256[:12]}…): it is corrupt or being "
                    "rewritten; re-run the step that wrote it"
                )
            yield p

    def read_bytes(self, name: str) -> bytes:
        with self.path(name) as p:
            return p.read_bytes()

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    def read_parquet(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        import pandas as pd

        with self.path(name) as p:
            return pd.read_parquet(p, columns=columns)

    def download_dir(self, name: str, dest: str | Path) -> Path:
        """Copy every manifest file under `name/` to `dest`, verified."""
        folder = name.rstrip("/") + "/"
        if not any(f.startswith(folder) for f in self.manifest.files):
            raise ArtifactError(f"{self.uri} has no folder {name!r}")
        return self._download({f: f[len(folder) :] for f in self.manifest.files if f.startswith(folder)}, dest)

    def download_all(self, dest: str | Path) -> Path:
        """Copy every file of the artifact to `dest`, verified."""
        return self._download({f: f for f in self.manifest.files}, dest)

    def _download(self, names: dict[str, str], dest: str | Path) -> Path:
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for fname, relative in names.items():
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.path(fname) as p:
                shutil.copyfile(p, target)
        return dest

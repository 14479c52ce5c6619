"""Model registry: immutable numbered versions, a `production` alias moved by compare-and-swap, an audit log.

Layout under the store root, per model name:

    models/{name}/claims/v{N}.json         create-only claim of version number N
    models/{name}/v{N}/                    the version: a committed artifact (manifest written last) holding
                                           model/ (the Recommender bundle), id_maps/, items.parquet,
                                           config.json, metrics.json, blessing.json, version.json
    models/{name}/production.json          the alias {version, uri, previous_version, updated_at, run_id,
                                           actor, reason, generation}
    models/{name}/history/{seq:010d}.json  one object per event (alias changes and every attempt)

Concurrency (every rule holds on file:// and S3, using only `store.put_if_match`):
- A version number is taken by a create-only write of its claim (`put_if_match(key, data, None)`); a
  publisher that loses a number tries the next one, so two publishers never share a version. A claim
  whose version never got its manifest (a crashed publish) simply leaves a gap: numbers are never reused.
- The alias is one small object replaced with `put_if_match` against the etag read just before, so a
  racing writer can never be overwritten unseen. A publisher passes `expected=` the champion version it
  was evaluated against; if the alias no longer points there, the promotion is refused with
  `AliasConflict` (recorded in the history) instead of silently replacing a model it was never compared
  with. Callers without an expectation (an operator's `promote`) re-read and retry on a lost race.
- History events are separate objects whose sequence numbers are claimed create-only, so concurrent
  writers never overwrite each other's records; `history()` returns them in sequence order. Every alias
  change also bumps the alias's `generation`, which the success event records, so the chain of alias
  changes can be checked for gaps even when two events were logged in the opposite order.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from recloop.artifacts import MANIFEST, Artifact, ArtifactWriter
from recloop.artifacts.kinds import RegisteredModel
from recloop.errors import ArtifactError, ConfigError, ConflictError, RecloopError, StoreError
from recloop.store import sha256_file

if TYPE_CHECKING:
    from recloop.config import PipelineConfig
    from recloop.store import ArtifactStore

MODELS_PREFIX = "models"
ALIAS_NAME = "production.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
_VERSION_DIR_RE = re.compile(r"^v(\d+)$")
_CLAIM_RE = re.compile(r"^v(\d+)\.json$")
_HISTORY_RE = re.compile(r"^(\d{10})\.json$")
# A create-only claim that keeps losing is a sign of a broken store, not of honest contention.
_MAX_CLAIM_ATTEMPTS = 1000
_MAX_CAS_ATTEMPTS = 20


class _Any:
    """Sentinel for `promote(expected=ANY)`: move the alias whatever it points to now."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()


class AliasConflict(ConflictError):
    """The production alias no longer points at the version the caller expected; nothing was changed."""

    def __init__(self, message: str, expected: int | None, found: int | None):
        super().__init__(message)
        self.expected = expected
        self.found = found


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def check_model_name(name: str) -> str:
    """A registry name must be one safe path segment."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            "model name",
            [
                f"{name!r} is not a valid registry model name: use letters, digits, '.', '-' and '_' "
                "(at most 128 characters, starting with a letter or digit)"
            ],
        )
    return name


def list_models(store: ArtifactStore) -> list[str]:
    """Names of the models that have at least one version claim or an alias in this store."""
    names: set[str] = set()
    for key in store.list(MODELS_PREFIX):
        parts = key.split("/")
        if (
            len(parts) >= 3
            and parts[0] == MODELS_PREFIX
            and (parts[2] in ("claims", ALIAS_NAME) or _VERSION_DIR_RE.match(parts[2]))
        ):
            names.add(parts[1])
    return sorted(names)


# ---------------------------------------------------------------------------------------------- records


@dataclass
class Alias:
    """The content of `production.json`."""

    version: int
    uri: str
    previous_version: int | None
    updated_at: str
    run_id: str | None
    actor: str
    reason: str
    generation: int = 1

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Alias:
        try:
            d = json.loads(data)
            return cls(
                version=int(d["version"]),
                uri=str(d["uri"]),
                previous_version=None if d.get("previous_version") is None else int(d["previous_version"]),
                updated_at=str(d.get("updated_at", "")),
                run_id=d.get("run_id"),
                actor=str(d.get("actor", "")),
                reason=str(d.get("reason", "")),
                generation=int(d.get("generation", 1)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(
                f"{where} is corrupt ({exc}); repair it by promoting a known version: "
                "`recloop model rollback NAME --to VERSION`"
            ) from None


@dataclass
class HistoryEvent:
    """One audit record. `outcome`: success | conflict | refused | failed | noop | dry_run."""

    seq: int
    at: str
    action: str  # publish | promote | rollback | register
    outcome: str
    version: int | None = None  # the version the action was about
    previous_version: int | None = None  # what the alias pointed to when the action ran
    expected_version: int | None = None  # what the caller required it to point to (None: nothing / not checked)
    run_id: str | None = None
    actor: str = ""
    reason: str = ""
    message: str = ""
    generation: int | None = None  # alias generation written by a successful alias change

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistoryEvent:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ModelVersion:
    """A registered version. `metrics`, `blessing` and `config` are filled by `get()`, not by `list_versions()`."""

    version: int
    uri: str
    model_name: str
    candidate: str
    model_type: str
    run_id: str
    created_at: str
    actor: str
    config_hash: str | None = None
    split_fingerprint: str | None = None
    primary_metric: str | None = None
    primary_value: float | None = None
    lineage: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    blessing: dict[str, Any] | None = None
    config: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The small facts kept in the version's manifest summary (what `list_versions` reads)."""
        return {k: v for k, v in asdict(self).items() if k not in ("metrics", "blessing", "config")}

    @classmethod
    def from_summary(cls, d: dict[str, Any], uri: str, created_at: str) -> ModelVersion:
        known = {f for f in cls.__dataclass_fields__} - {"metrics", "blessing", "config"}
        values = {k: v for k, v in d.items() if k in known}
        values.setdefault("created_at", created_at)
        values["uri"] = uri
        return cls(**values)


@dataclass
class VersionSource:
    """Local files and facts a new version is made of (what the publish step hands to `register`)."""

    bundle_dir: Path  # a saved Recommender bundle (model.json, arrays.safetensors)
    candidate: str
    model_type: str
    run_id: str
    id_maps_dir: Path | None = None  # users.parquet / items.parquet mapping contiguous ids to raw ids
    items_file: Path | None = None  # items.parquet (item_idx, item_id, text, categories)
    config: PipelineConfig | None = None  # snapshot stored as JSON (secrets masked)
    metrics: dict[str, Any] | None = None
    blessing: dict[str, Any] | None = None
    lineage: dict[str, str] = field(default_factory=dict)
    split_fingerprint: str | None = None
    primary_metric: str | None = None
    primary_value: float | None = None


@dataclass
class ChampionBundle:
    """The production version downloaded and verified: load it with `Recommender.load(bundle.path)`."""

    version: int
    path: Path  # the model bundle folder
    id_maps_dir: Path | None  # users.parquet / items.parquet of the champion's id space
    info: ModelVersion


@dataclass
class AliasChange:
    """What `promote` / `rollback` did."""

    from_version: int | None
    to_version: int
    alias: Alias
    changed: bool


# ---------------------------------------------------------------------------------------------- registry


class ModelRegistry:
    """Versions, production alias and history of one model name in an artifact store."""

    def __init__(self, store: ArtifactStore, model_name: str, actor: str = "recloop"):
        self.store = store
        self.name = check_model_name(model_name)
        self.actor = actor
        self.prefix = f"{MODELS_PREFIX}/{self.name}"

    # ------------------------------------------------------------------ keys
    def version_prefix(self, version: int) -> str:
        return f"{self.prefix}/v{int(version)}"

    @property
    def alias_key(self) -> str:
        return f"{self.prefix}/{ALIAS_NAME}"

    @property
    def uri(self) -> str:
        return self.store.uri(self.prefix)

    # ------------------------------------------------------------------ reading
    def list_versions(self) -> list[ModelVersion]:
        """Committed versions, oldest first (claims whose publish never completed are not versions)."""
        out = []
        for number in self._committed_numbers():
            prefix = self.version_prefix(number)
            art = Artifact.open(self.store, prefix)
            out.append(ModelVersion.from_summary(art.manifest.summary, art.uri, art.manifest.created_at))
        return out

    def _committed_numbers(self) -> list[int]:
        numbers = []
        for key in self.store.list(self.prefix):
            rest = key[len(self.prefix) + 1 :]
            head, _, tail = rest.partition("/")
            m = _VERSION_DIR_RE.match(head)
            if m and tail == MANIFEST:
                numbers.append(int(m.group(1)))
        return sorted(numbers)

    def exists(self) -> bool:
        return bool(self.store.list(self.prefix))

    def _open_version(self, version: int) -> RegisteredModel:
        prefix = self.version_prefix(version)
        if not Artifact.exists(self.store, prefix):
            known = self._committed_numbers()
            listing = ", ".join(f"v{n}" for n in known) if known else "none yet"
            raise ArtifactError(
                f"model {self.name!r} has no version {version} in {self.uri} "
                f"(versions: {listing}); see `recloop model list {self.name}`"
            )
        return RegisteredModel.open(self.store, prefix)

    def get(self, version: int) -> ModelVersion:
        """A version with its metrics, blessing and config snapshot (each verified against the manifest)."""
        art = self._open_version(version)
        info = ModelVersion.from_summary(art.summary, art.uri, art.created_at)
        info.metrics = art.metrics()
        info.blessing = art.blessing()
        info.config = art.config()
        return info

    def _read_alias(self) -> tuple[Alias | None, str | None, bytes | None]:
        """(alias, etag, raw bytes); alias None when absent. A corrupt alias raises ArtifactError."""
        # stat before get: if the object changes in between we hold content newer than the etag, and a
        # CAS with that stale etag fails safely. The reverse order could pair old content with a new etag.
        info = self.store.stat(self.alias_key)
        if info is None:
            return None, None, None
        try:
            raw = self.store.get_bytes(self.alias_key)
        except FileNotFoundError:
            return None, None, None
        return Alias.from_bytes(raw, self.store.uri(self.alias_key)), info.etag, raw

    def production(self) -> Alias | None:
        """The production alias, or None when no version was ever promoted."""
        return self._read_alias()[0]

    def champion(self) -> ModelVersion | None:
        """The production version's record (with metrics and blessing), or None."""
        alias = self.production()
        return None if alias is None else self.get(alias.version)

    def champion_bundle(self, local_dir: str | Path) -> ChampionBundle | None:
        """Download the production model bundle and id maps to `local_dir` (verified); None if no production."""
        alias = self.production()
        if alias is None:
            return None
        art = self._open_version(alias.version)
        local_dir = Path(local_dir)
        bundle = art.download_bundle(local_dir / RegisteredModel.BUNDLE)
        id_maps = art.download_id_maps(local_dir / RegisteredModel.ID_MAPS)
        info = ModelVersion.from_summary(art.summary, art.uri, art.created_at)
        return ChampionBundle(alias.version, bundle, id_maps, info)

    def download(self, version: int, local_dir: str | Path) -> Path:
        """Download one version's model bundle (verified) into `local_dir`; returns that folder."""
        return self._open_version(version).download_bundle(Path(local_dir))

    def history(self) -> list[HistoryEvent]:
        """Every recorded event, in the order they were recorded."""
        events = []
        for seq in self._history_seqs():
            key = self._history_key(seq)
            try:
                events.append(HistoryEvent.from_dict(json.loads(self.store.get_bytes(key))))
            except FileNotFoundError:
                continue
            except (json.JSONDecodeError, TypeError) as exc:
                raise ArtifactError(f"history record {self.store.uri(key)} is corrupt ({exc})") from None
        return events

    # ------------------------------------------------------------------ registering
    def find_version(self, source: VersionSource) -> ModelVersion | None:
        """An existing version holding exactly this run's candidate bundle (makes re-publishing idempotent)."""
        local = {
            p.relative_to(source.bundle_dir).as_posix(): sha256_file(p)
            for p in sorted(source.bundle_dir.rglob("*"))
            if p.is_file()
        }
        for number in reversed(self._committed_numbers()):
            art = RegisteredModel.open(self.store, self.version_prefix(number))
            summary = art.summary
            if summary.get("run_id") != source.run_id or summary.get("candidate") != source.candidate:
                continue
            if art.bundle_hashes() == local:
                return ModelVersion.from_summary(summary, art.uri, art.created_at)
        return None

    def _claim_version(self, run_id: str) -> int:
        claims_prefix = f"{self.prefix}/claims"
        taken = [
            int(m.group(1)) for key in self.store.list(claims_prefix) if (m := _CLAIM_RE.match(key.rsplit("/", 1)[-1]))
        ]
        # Versions written by hand (or before claims existed) still count as taken.
        number = max(taken + self._committed_numbers() + [0]) + 1
        claim = json.dumps({"run_id": run_id, "actor": self.actor, "claimed_at": _now()}).encode()
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            try:
                self.store.put_if_match(f"{claims_prefix}/v{number}.json", claim, None)
                return number
            except ConflictError:
                number += 1
        raise StoreError(
            f"could not claim a version number under {self.store.uri(claims_prefix)} after "
            f"{_MAX_CLAIM_ATTEMPTS} attempts; check that the store supports conditional writes"
        )

    def register(self, source: VersionSource) -> ModelVersion:
        """Store `source` as a new immutable version `v{N}` (N claimed race-free); does not touch the alias."""
        if not (source.bundle_dir / "model.json").is_file():
            raise ArtifactError(f"{source.bundle_dir} is not a model bundle (model.json is missing)")
        number = self._claim_version(source.run_id)
        prefix = self.version_prefix(number)
        info = ModelVersion(
            version=number,
            uri=self.store.uri(prefix),
            model_name=self.name,
            candidate=source.candidate,
            model_type=source.model_type,
            run_id=source.run_id,
            created_at=_now(),
            actor=self.actor,
            config_hash=source.config.config_hash() if source.config is not None else None,
            split_fingerprint=source.split_fingerprint,
            primary_metric=source.primary_metric,
            primary_value=source.primary_value,
            lineage=dict(source.lineage),
        )
        parents = sorted(set(source.lineage.values()))
        try:
            with ArtifactWriter(
                self.store,
                prefix,
                step="model-version",
                run_id=source.run_id,
                config_hash=info.config_hash,
                parents=parents,
            ) as writer:
                writer.add_dir(RegisteredModel.BUNDLE, source.bundle_dir)
                if source.id_maps_dir is not None:
                    writer.add_dir(RegisteredModel.ID_MAPS, source.id_maps_dir)
                if source.items_file is not None:
                    writer.add_file(RegisteredModel.ITEMS, source.items_file)
                if source.config is not None:
                    writer.put_json(RegisteredModel.CONFIG, source.config.model_dump(mode="json"))
                if source.metrics is not None:
                    writer.put_json(RegisteredModel.METRICS, source.metrics)
                if source.blessing is not None:
                    writer.put_json(RegisteredModel.BLESSING, source.blessing)
                writer.put_json(RegisteredModel.VERSION, info.summary())
                writer.summary.update(info.summary())
        except BaseException:
            # The claim stays (numbers are never reused); drop the uncommitted files if the store lets us.
            try:
                self.store.delete_prefix(prefix)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            raise
        self.record(
            "register",
            "success",
            version=number,
            run_id=source.run_id,
            message=f"registered {source.candidate} ({source.model_type}) as v{number}",
        )
        return info

    # ------------------------------------------------------------------ alias
    def promote(
        self,
        version: int,
        expected: int | None | _Any = ANY,
        *,
        reason: str = "",
        run_id: str | None = None,
        action: str = "promote",
    ) -> AliasChange:
        """Point `production` at `version` with one compare-and-swap PUT.

        `expected`: the version production must point at now (None: no production yet). If it points
        elsewhere the alias is left alone and `AliasConflict` is raised. With `ANY`, a lost race is retried
        against the new value. Every outcome is recorded in the history.
        """
        target = self._open_version(version)
        check = None if isinstance(expected, _Any) else expected
        for _ in range(_MAX_CAS_ATTEMPTS):
            try:
                current, etag, _raw = self._read_alias()
            except ArtifactError:
                if not isinstance(expected, _Any):
                    raise
                # A corrupt alias can only be repaired by an unconditional promotion: overwrite it.
                current, etag = None, self._etag_of_alias()
            found = current.version if current else None
            if current is not None and found == version:
                # Already there (e.g. a publish re-run after it succeeded): the wanted state holds.
                self.record(
                    action,
                    "noop",
                    version=version,
                    previous_version=found,
                    expected_version=check,
                    run_id=run_id,
                    reason=reason,
                    message=f"v{version} is already production",
                )
                return AliasChange(found, version, current, changed=False)
            if not isinstance(expected, _Any) and found != expected:
                message = (
                    f"production of {self.name!r} points at {format_version(found)}, but this {action} was "
                    f"decided against {format_version(expected)}; the alias was not changed"
                )
                self.record(
                    action,
                    "conflict",
                    version=version,
                    previous_version=found,
                    expected_version=check,
                    run_id=run_id,
                    reason=reason,
                    message=message,
                )
                raise AliasConflict(message, expected=check, found=found)
            new = Alias(
                version=version,
                uri=target.uri,
                previous_version=found,
                updated_at=_now(),
                run_id=run_id,
                actor=self.actor,
                reason=reason,
                generation=(current.generation + 1) if current else 1,
            )
            try:
                self.store.put_if_match(self.alias_key, new.to_bytes(), etag)
            except ConflictError:
                continue  # someone moved it between our read and write: re-read and decide again
            except StoreError as exc:
                if self._alias_is(new):  # the PUT landed but its answer was lost
                    break
                self.record_quietly(
                    action,
                    "failed",
                    version=version,
                    previous_version=found,
                    expected_version=check,
                    run_id=run_id,
                    reason=reason,
                    message=str(exc),
                )
                raise StoreError(
                    f"could not move the production alias of {self.name!r} to v{version} ({exc}); "
                    f"it still points at {format_version(found)} unless `recloop model show {self.name}` "
                    "says otherwise; retry when the store is reachable"
                ) from None
            break
        else:
            raise ConflictError(
                f"the production alias of {self.name!r} kept changing during {_MAX_CAS_ATTEMPTS} attempts; retry later"
            )
        self.record(
            action,
            "success",
            version=version,
            previous_version=found,
            expected_version=check,
            run_id=run_id,
            reason=reason,
            generation=new.generation,
            message=f"production: {format_version(found)} -> {format_version(version)}",
        )
        return AliasChange(found, version, new, changed=True)

    def rollback(self, to: int | None = None, *, reason: str = "") -> AliasChange:
        """Point production back at `to`, by default the version it replaced last (`previous_version`).

        Like `kubectl rollout undo`, rolling back twice returns to where you started. The alias must not
        change between reading it and the swap (otherwise `AliasConflict`: look again and decide).
        """
        try:
            current = self.production()
        except ArtifactError:
            if to is None:
                raise
            # A corrupt alias: rolling back to a named version is the repair, so overwrite it.
            return self.promote(int(to), action="rollback", reason=reason or f"repair the alias: v{int(to)}")
        if current is None:
            raise RecloopError(
                f"model {self.name!r} has no production version to roll back; "
                f"promote one first (`recloop model promote {self.name} VERSION`)"
            )
        target = current.previous_version if to is None else int(to)
        if target is None:
            raise RecloopError(
                f"production of {self.name!r} (v{current.version}) replaced no earlier version, "
                "so there is nothing to roll back to; pass --to VERSION"
            )
        return self.promote(
            target,
            expected=current.version,
            action="rollback",
            reason=reason or f"rollback from v{current.version} to v{target}",
        )

    def _etag_of_alias(self) -> str | None:
        info = self.store.stat(self.alias_key)
        return info.etag if info else None

    def _alias_is(self, alias: Alias) -> bool:
        try:
            return self.store.get_bytes(self.alias_key) == alias.to_bytes()
        except Exception:  # noqa: BLE001 - unreachable store: we cannot claim success
            return False

    # ------------------------------------------------------------------ history
    def _history_key(self, seq: int) -> str:
        return f"{self.prefix}/history/{seq:010d}.json"

    def _history_seqs(self) -> list[int]:
        return sorted(
            int(m.group(1))
            for key in self.store.list(f"{self.prefix}/history")
            if (m := _HISTORY_RE.match(key.rsplit("/", 1)[-1]))
        )

    def record(self, action: str, outcome: str, **fields: Any) -> HistoryEvent:
        """Append one event to the history (its sequence number is claimed create-only)."""
        seqs = self._history_seqs()
        seq = (seqs[-1] + 1) if seqs else 1
        fields.setdefault("actor", self.actor)
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            event = HistoryEvent(seq=seq, at=_now(), action=action, outcome=outcome, **fields)
            try:
                self.store.put_if_match(
                    self._history_key(seq), json.dumps(asdict(event), sort_keys=True).encode(), None
                )
                return event
            except ConflictError:
                seq += 1
        raise StoreError(f"could not append to the history of {self.name!r} after {_MAX_CLAIM_ATTEMPTS} attempts")

    def record_quietly(self, action: str, outcome: str, **fields: Any) -> None:
        """Record an event while already failing: a store outage must not hide the original error."""
        try:
            self.record(action, outcome, **fields)
        except Exception:  # noqa: BLE001
            pass


def format_version(version: int | None, none: str = "nothing") -> str:
    """How a version number reads in messages and tables: 'v3', or `none` when there is no version."""
    return none if version is None else f"v{version}"

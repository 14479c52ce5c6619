"""Loading the production model and swapping to a new one while serving.

`load_version` downloads one registry version (bundle, id maps, items; every file verified against the
version's manifest), loads it and precomputes what requests need (id maps, categories, text index,
fallback rankings, the ANN index). A `ServedModel` is immutable once built.

`ModelHolder` owns the current `ServedModel`. A watcher thread polls the production alias every
`serving.poll_interval`; when it names another version (newer, or older after a rollback) the watcher
loads it completely and only then replaces the reference in one assignment. Each request reads the
reference once and uses that object to the end, so requests in flight finish on the old model and none
fails during a swap. A version that fails to load is logged and counted, the old one keeps serving, and
the load is retried with back-off.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recloop.artifacts.kinds import RegisteredModel
from recloop.config import ServingConfig
from recloop.errors import ArtifactError, RecloopError
from recloop.registry import ModelRegistry, ModelVersion
from recloop.serving.catalog import Catalog, UserIndex
from recloop.serving.explain import Explainer
from recloop.serving.index import AnnIndex, build_ann_index
from recloop.serving.rules import static_allowed

if TYPE_CHECKING:
    from recloop.models.base import Recommender, VectorSpace
    from recloop.serving.metrics import ServingMetrics
    from recloop.store import ArtifactStore

log = logging.getLogger("recloop.serving")

_MAX_RETRY_DELAY_S = 300.0


@dataclass
class ServedModel:
    """One loaded model version and everything precomputed for serving it."""

    model_name: str
    version: int
    info: ModelVersion
    model: Recommender
    users: UserIndex
    catalog: Catalog
    allowed: np.ndarray  # bool (n_items,): items the configured rules ever allow (read-only)
    cold: np.ndarray | None  # bool (n_items,): items an ID-only model cannot score; None = it scores all
    popular: np.ndarray  # float32 (n_items,) interaction counts
    trending: np.ndarray  # float32 (n_items,) time-decayed interaction counts
    space: VectorSpace | None
    ann: AnnIndex | None
    ann_info: dict[str, Any]
    explainer: Explainer
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def model_type(self) -> str:
        return self.model.type_name

    @property
    def search(self) -> str:
        return "ann" if self.ann is not None else "exact"

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "model_type": self.model_type,
            "candidate": self.info.candidate,
            "run_id": self.info.run_id,
            "uri": self.info.uri,
            "created_at": self.info.created_at,
            "loaded_at": self.loaded_at,
            "n_users": self.model.n_users,
            "n_items": self.model.n_items,
            "search": self.search,
            "ann": self.ann_info,
            "explanations": self.explainer.method,
        }


def _fallback_rankings(model: Recommender, half_life_s: float) -> tuple[np.ndarray, np.ndarray]:
    histories = model.train_histories
    assert histories is not None
    items = histories.items.astype(np.int64)
    popular = np.bincount(items, minlength=model.n_items).astype(np.float32)
    if len(items):
        age = (histories.timestamps.max() - histories.timestamps).astype(np.float64)
        decayed = np.exp2(-age / max(half_life_s, 1e-9))
    else:
        decayed = np.zeros(0)
    trending = np.bincount(items, weights=decayed, minlength=model.n_items).astype(np.float32)
    return popular, trending


def load_version(
    store: ArtifactStore, registry: ModelRegistry, version: int, settings: ServingConfig, work_dir: Path
) -> ServedModel:
    """Download, verify and load one registry version into a ready-to-serve object."""
    from recloop.models.base import Recommender

    prefix = registry.version_prefix(version)
    art = RegisteredModel.open(store, prefix)
    info = ModelVersion.from_summary(art.summary, art.uri, art.created_at)
    where = f"{registry.name} v{version} ({art.uri})"
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=f"v{version}-") as tmp_name:
        tmp = Path(tmp_name)
        bundle = art.download_bundle(tmp / RegisteredModel.BUNDLE)
        id_maps = art.download_id_maps(tmp / RegisteredModel.ID_MAPS)
        items_file = art.download_items(tmp / RegisteredModel.ITEMS)
        try:
            model = Recommender.load(bundle)
        except (KeyError, ValueError) as exc:
            raise ArtifactError(f"{where}: the model bundle does not load ({exc})") from None
        item_map = id_maps / RegisteredModel.ITEM_MAP if id_maps else None
        catalog = Catalog.load(model.n_items, item_map, items_file, where)
        users = UserIndex.load(model.n_users, id_maps / RegisteredModel.USER_MAP if id_maps else None, where)

        space = model.vector_space()
        ann, ann_info = None, {"built": False, "reason": "serving.ann.enabled is false"}
        if settings.ann.enabled:
            ann = AnnIndex.load(bundle)
            if ann is not None and (
                space is None or ann.n_items != model.n_items or int(ann.meta["dim"]) != space.item_vectors.shape[1]
            ):
                log.warning("%s: the bundle's ANN index does not fit the model; building a new one", where)
                ann = None
            if ann is not None:
                ann_info = {**ann.meta, "source": "bundle"}
            else:
                # Versions published without an index (or before indexes existed): build it here, once.
                ann_info = build_ann_index(model, tmp / "lazy", settings.ann)
                if ann_info.get("built"):
                    ann = AnnIndex.load(tmp / "lazy")
                    ann_info["source"] = "built_at_load"
                    log.info(
                        "%s: built the ANN index at load (recall@10 %.3f, ef_search %s) in %.1fs",
                        where,
                        ann_info["recall@10"],
                        ann_info["ef_search"],
                        ann_info["total_seconds"],
                    )

    cold = None if model.scores_cold_items else model.cold_item_mask()
    if cold is not None and not cold.any():
        cold = None
    popular, trending = _fallback_rankings(model, settings.fallback.trending_half_life.total_seconds())
    allowed = static_allowed(catalog, settings.rules)
    allowed.setflags(write=False)
    explainer = Explainer(model, catalog, space.item_vectors if space is not None else None, settings.explain_items)
    return ServedModel(
        registry.name,
        version,
        info,
        model,
        users,
        catalog,
        allowed,
        cold,
        popular,
        trending,
        space,
        ann,
        ann_info,
        explainer,
    )


class ModelHolder:
    """The current ServedModel, replaced atomically when the production alias moves."""

    def __init__(
        self, store: ArtifactStore, model_name: str, settings: ServingConfig, metrics: ServingMetrics | None = None
    ):
        self.store = store
        self.registry = ModelRegistry(store, model_name, actor="recloop serve")
        self.settings = settings
        self.metrics = metrics
        self.current: ServedModel | None = None
        self.production_version: int | None = None
        self.last_error: str | None = None
        self.last_check_at: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: dict[int, tuple[float, float]] = {}  # version -> (retry at, current delay)
        self._own_dir = settings.cache_dir is None
        self.work_dir = (
            Path(settings.cache_dir) if settings.cache_dir else Path(tempfile.mkdtemp(prefix="recloop-serve-"))
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="recloop-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def request_check(self) -> None:
        """Check the alias now instead of at the next poll (admin reload)."""
        self._failed.clear()
        self._wake.set()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.current is not None:
                return True
            time.sleep(0.02)
        return self.current is not None

    # ------------------------------------------------------------------ watching
    def _watch(self) -> None:
        interval = self.settings.poll_interval.total_seconds()
        while not self._stop.is_set():
            self.check_once()
            self._wake.wait(interval)
            self._wake.clear()

    def check_once(self) -> bool:
        """Read the alias; load and swap to its version if that is not the one served. True if swapped."""
        self.last_check_at = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            alias = self.registry.production()
        except RecloopError as exc:
            self._note_error(f"cannot read the production alias of {self.registry.name!r}: {exc}")
            return False
        except Exception as exc:  # noqa: BLE001 - the watcher must survive anything the store throws
            self._note_error(f"cannot read the production alias of {self.registry.name!r}: {exc!r}")
            return False
        if alias is None:
            self._note_error(
                f"model {self.registry.name!r} has no production version in {self.store.root} yet; "
                "publish one (`recloop step publish`) or promote one (`recloop model promote`)"
            )
            return False
        self.production_version = alias.version
        current = self.current
        if current is not None and current.version == alias.version:
            self.last_error = None
            return False
        retry = self._failed.get(alias.version)
        if retry is not None and time.monotonic() < retry[0]:
            return False
        started = time.perf_counter()
        try:
            served = load_version(self.store, self.registry, alias.version, self.settings, self.work_dir)
        except Exception as exc:  # noqa: BLE001 - keep serving the old version whatever went wrong
            delay = min(
                _MAX_RETRY_DELAY_S, (retry[1] * 2) if retry else max(self.settings.poll_interval.total_seconds(), 1.0)
            )
            self._failed[alias.version] = (time.monotonic() + delay, delay)
            if self.metrics is not None:
                self.metrics.load_failures.inc()
            kept = f"; still serving v{current.version}" if current is not None else ""
            self._note_error(
                f"loading {self.registry.name} v{alias.version} failed: {exc}{kept}; retrying in {delay:.0f}s"
            )
            return False
        self._failed.pop(alias.version, None)
        self.current = served  # the swap: one reference assignment
        self.last_error = None
        if self.metrics is not None:
            self.metrics.set_model(served.model_name, served.version, served.model_type, served.search)
            if current is not None:
                self.metrics.swaps.inc()
        log.info(
            "serving %s v%d (%s, %d items, %s search), loaded in %.2fs%s",
            served.model_name,
            served.version,
            served.model_type,
            served.model.n_items,
            served.search,
            time.perf_counter() - started,
            f"; replaced v{current.version}" if current is not None else "",
        )
        return True

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning(message)
        self.last_error = message

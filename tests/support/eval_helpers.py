"""Test fixtures for evaluation: contract-conforming preprocess and train artifacts, and test-only models.

`write_preprocess` commits `runs/{run}/preprocess/` as the preprocess contract describes (splits with
user_idx/item_idx int32, timestamp int64 seconds, weight float32, rating float64; id maps; items.parquet).
`write_train` commits `runs/{run}/train/{candidate}/` bundles saved by `Recommender.save`. `setup_run` gives
a step context over a small world of both, ready for evaluate; `register_champion` publishes a production
version trained on other id maps.

Two test-only models are registered by `registered_test_models()` (and removed again afterwards):
`evaltest_table` scores from a fixed (n_users, n_items) table, so tests know the exact ranking;
`evaltest_random` scores uniformly at random (seeded), the deliberately degraded candidate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from recloop.artifacts import ArtifactWriter, run_prefix
from recloop.artifacts.kinds import TrainedModel
from recloop.config import StoreConfig
from recloop.config.models import ModelConfig
from recloop.data.interactions import Histories, Interactions
from recloop.models.base import FitContext, Recommender
from recloop.steps.base import StepContext
from recloop.store import ArtifactStore
from support.helpers import make_config, make_context, restored_model_registry


class TableConfig(ModelConfig):
    type: Literal["evaltest_table"] = "evaltest_table"


class RandomConfig(ModelConfig):
    type: Literal["evaltest_random"] = "evaltest_random"


class TableScores(Recommender):
    """Scores come from a fixed table; users passed by id use their row, anonymous users get zeros."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.table = np.zeros((0, 0), np.float32)

    def fit(
        self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None
    ) -> TableScores:
        self._remember(train)
        return self

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        if users is None:
            return np.zeros((len(histories), self.n_items), np.float32)
        return self.table[np.asarray(users, dtype=np.int64)]

    def _state(self) -> dict[str, np.ndarray]:
        return {"table": self.table}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.table = arrays["table"]


class RandomScores(Recommender):
    def fit(
        self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None
    ) -> RandomScores:
        self._remember(train)
        return self

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        rng = np.random.default_rng(self.config.seed + len(histories))
        return rng.random((len(histories), self.n_items), dtype=np.float32)

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        pass


@contextlib.contextmanager
def registered_test_models() -> Iterator[None]:
    """Register the test-only models for the duration of a test; the global registry is restored after."""
    from recloop.models import registry

    with restored_model_registry():
        registry.register(TableConfig)(TableScores)
        registry.register(RandomConfig)(RandomScores)
        yield


def split_frame(rows: Sequence[tuple[int, int, int]]) -> pd.DataFrame:
    """(user_idx, item_idx, timestamp) rows -> a split frame with the contract's dtypes."""
    users, items, ts = zip(*rows) if rows else ((), (), ())
    n = len(users)
    return pd.DataFrame(
        {
            "user_idx": np.asarray(users, dtype=np.int32),
            "item_idx": np.asarray(items, dtype=np.int32),
            "timestamp": np.asarray(ts, dtype=np.int64),
            "weight": np.ones(n, dtype=np.float32),
            "rating": np.full(n, 4.0),
        }
    )


def write_preprocess(
    store: ArtifactStore,
    run_id: str,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    categories: Sequence[Sequence[str]] | None = None,
    config_hash: str | None = None,
) -> str:
    prefix = run_prefix(run_id, "preprocess")
    with ArtifactWriter(store, prefix, "preprocess", run_id, config_hash=config_hash) as w:
        for name, df in (("train", train), ("valid", valid), ("test", test)):
            w.put_parquet(f"{name}.parquet", df)
        w.put_parquet(
            "id_maps/users.parquet",
            pd.DataFrame({"user_idx": np.arange(len(user_ids), dtype=np.int32), "user_id": list(user_ids)}),
        )
        w.put_parquet(
            "id_maps/items.parquet",
            pd.DataFrame({"item_idx": np.arange(len(item_ids), dtype=np.int32), "item_id": list(item_ids)}),
        )
        cats = [list(c) for c in categories] if categories is not None else [[] for _ in item_ids]
        w.put_parquet(
            "items.parquet",
            pd.DataFrame(
                {
                    "item_idx": np.arange(len(item_ids), dtype=np.int32),
                    "item_id": list(item_ids),
                    "text": list(item_ids),
                    "categories": cats,
                }
            ),
        )
        w.summary.update(
            {
                "n_users": len(user_ids),
                "n_items": len(item_ids),
                "n_train": len(train),
                "n_valid": len(valid),
                "n_test": len(test),
                "split": "leave_last_out",
            }
        )
    return store.uri(prefix)


def train_interactions(train: pd.DataFrame, n_users: int, n_items: int) -> Interactions:
    return Interactions.from_frame(train, n_users, n_items)


def table_model(train: Interactions, table: np.ndarray, name: str | None = None) -> TableScores:
    model = TableScores(TableConfig(name=name))
    model.fit(train)
    model.table = np.asarray(table, dtype=np.float32)
    return model


def random_model(train: Interactions, name: str | None = None, seed: int = 0) -> RandomScores:
    return RandomScores(RandomConfig(name=name, seed=seed)).fit(train)


def write_train(
    store: ArtifactStore,
    run_id: str,
    models: dict[str, Recommender],
    preprocess_uri: str,
    tmp: Path,
    config_hash: str | None = None,
) -> str:
    """One committed TrainedModel artifact per candidate under runs/{run}/train/; returns that folder's URI."""
    prefix = run_prefix(run_id, "train")
    for name, model in models.items():
        model.id_map_ref = f"{preprocess_uri}/id_maps"
        bundle = model.save(tmp / f"bundle-{run_id}-{name}")
        with ArtifactWriter(
            store, f"{prefix}/{name}", "train", run_id, config_hash=config_hash, parents=[preprocess_uri]
        ) as w:
            TrainedModel.write(
                w,
                bundle,
                {
                    "type": model.type_name,
                    "train_seconds": 0.01,
                    "epochs": 1,
                    "best_valid_metric": None,
                    "valid_metric": "ndcg@10",
                },
            )
    return store.uri(prefix)


# ---------------------------------------------------------------------------------------------- a small world

N_USERS, N_ITEMS = 12, 10
USER_IDS = [f"u{u}" for u in range(N_USERS)]
ITEM_IDS = [f"i{i}" for i in range(N_ITEMS)]
CATEGORIES = [[f"g{i % 3}"] for i in range(N_ITEMS)]


def user_sequence(u: int) -> list[int]:
    """User u's five distinct items in time order: 3 train, 1 valid, 1 test (3·j mod 10 never repeats)."""
    return [(u + 3 * j) % N_ITEMS for j in range(5)]


def target_of(u: int) -> int:
    return user_sequence(u)[4]


def decoy_of(u: int) -> int:
    """The lowest item id user u never touched."""
    return min(set(range(N_ITEMS)) - set(user_sequence(u)))


def small_world_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    train, valid, test = [], [], []
    for u in range(N_USERS):
        seq = user_sequence(u)
        train += [(u, seq[j], 100 * u + j) for j in range(3)]
        valid.append((u, seq[3], 100 * u + 3))
        test.append((u, seq[4], 100 * u + 4))
    return split_frame(train), split_frame(valid), split_frame(test)


def oracle_table(rank_of_target: int = 1) -> np.ndarray:
    """Scores putting each user's test item at `rank_of_target` (1 or 2) among the items they have not seen:
    a small descending baseline by item id, +10 for the target, +20 for one decoy when rank 2 is wanted."""
    table = np.tile(-np.arange(N_ITEMS, dtype=np.float32) / 100, (N_USERS, 1))
    for u in range(N_USERS):
        table[u, target_of(u)] += 10
        if rank_of_target == 2:
            table[u, decoy_of(u)] += 20
    return table


def write_small_world(
    store: ArtifactStore, run_id: str, tmp: Path, candidates: dict[str, str], config_hash: str | None = None
) -> tuple[str, str]:
    """Commit preprocess + train artifacts of the small world; candidates: name -> 'oracle' | 'second' |
    'random'. Returns (preprocess uri, train uri)."""
    train, valid, test = small_world_frames()
    pre = write_preprocess(store, run_id, train, valid, test, USER_IDS, ITEM_IDS, CATEGORIES, config_hash)
    inter = train_interactions(train, N_USERS, N_ITEMS)
    models: dict[str, Recommender] = {}
    for name, kind in candidates.items():
        if kind == "random":
            models[name] = random_model(inter, name)
        else:
            models[name] = table_model(inter, oracle_table(1 if kind == "oracle" else 2), name)
    return pre, write_train(store, run_id, models, pre, tmp, config_hash)


# ---------------------------------------------------------------------------------------------- runs

K = [1, 5]  # the cut-offs setup_run evaluates at


def setup_run(
    tmp_path: Path,
    candidates: dict[str, str],
    overrides: dict | None = None,
    run_id: str = "r1",
    store: StoreConfig | None = None,
) -> tuple[StepContext, list[str]]:
    """A run with the small world's preprocess and train artifacts committed (candidates: name -> 'oracle' |
    'second' | 'random'), evaluated at K; returns its context and the list its log messages go to."""
    cfg = make_config(
        store or tmp_path / "store",
        {"evaluation.k": K, "evaluation.primary": "ndcg@5", "evaluation.bootstrap": 200, **(overrides or {})},
    )
    log: list[str] = []
    ctx = make_context(cfg, run_id, log=log)
    write_small_world(ctx.store, run_id, tmp_path / "bundles", candidates, cfg.config_hash())
    return ctx, log


def register_champion(store: ArtifactStore, workdir: Path, drop_user: str = "u5", drop_item: str = "i3") -> int:
    """A production version trained on other id maps: ids in reverse order, one user and one item fewer."""
    from recloop.registry import ModelRegistry, VersionSource

    c_users = [u for u in reversed(USER_IDS) if u != drop_user]
    c_items = [i for i in reversed(ITEM_IDS) if i != drop_item]
    cu = {u: n for n, u in enumerate(c_users)}
    ci = {i: n for n, i in enumerate(c_items)}
    table = np.zeros((len(c_users), len(c_items)), np.float32)
    for u in range(N_USERS):
        if USER_IDS[u] in cu and ITEM_IDS[target_of(u)] in ci:
            table[cu[USER_IDS[u]], ci[ITEM_IDS[target_of(u)]]] = 10.0
    empty = Interactions.from_arrays([], [], n_users=len(c_users), n_items=len(c_items))
    model = table_model(empty, table, "champ")
    root = workdir / "champion-source"
    bundle = model.save(root / "bundle")
    maps = root / "id_maps"
    maps.mkdir(parents=True)
    pd.DataFrame({"user_idx": np.arange(len(c_users), dtype=np.int32), "user_id": c_users}).to_parquet(
        maps / "users.parquet"
    )
    pd.DataFrame({"item_idx": np.arange(len(c_items), dtype=np.int32), "item_id": c_items}).to_parquet(
        maps / "items.parquet"
    )
    registry = ModelRegistry(store, "test")
    version = registry.register(
        VersionSource(bundle_dir=bundle, candidate="champ", model_type="evaltest_table", run_id="r0", id_maps_dir=maps)
    )
    registry.promote(version.version, expected=None)
    return version.version

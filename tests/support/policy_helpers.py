"""Test helpers for the learning loop: a real (small) model published to the registry, as serving sees it."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recloop.data.interactions import Interactions
from recloop.registry import ModelRegistry, VersionSource


def publish_popularity(
    store: Any,
    model_name: str,
    users: Sequence[str],
    items: Sequence[str],
    events: Sequence[tuple[int, int]] | None = None,
    categories: Sequence[Sequence[str]] | None = None,
) -> int:
    """Fit a popularity model on `events` ((user index, item index) pairs; by default user u saw item u),
    register it with id maps (and item categories) and make it production. Returns the version."""
    from recloop.config.models import PopularityConfig
    from recloop.models.popularity import Popularity

    pairs = list(events) if events is not None else [(u, u % len(items)) for u in range(len(users))]
    train = Interactions.from_arrays(
        [u for u, _ in pairs], [i for _, i in pairs], n_users=len(users), n_items=len(items)
    )
    model = Popularity(PopularityConfig(type="popularity")).fit(train)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model.save(tmp / "bundle")
        maps = tmp / "id_maps"
        maps.mkdir()
        pd.DataFrame({"user_idx": np.arange(len(users), dtype=np.int32), "user_id": list(users)}).to_parquet(
            maps / "users.parquet", index=False
        )
        pd.DataFrame({"item_idx": np.arange(len(items), dtype=np.int32), "item_id": list(items)}).to_parquet(
            maps / "items.parquet", index=False
        )
        items_file = tmp / "items.parquet"
        pd.DataFrame(
            {
                "item_idx": np.arange(len(items), dtype=np.int32),
                "item_id": list(items),
                "text": list(items),
                "categories": [list(c) for c in categories] if categories else [[] for _ in items],
            }
        ).to_parquet(items_file, index=False)
        registry = ModelRegistry(store, model_name)
        info = registry.register(
            VersionSource(
                bundle_dir=tmp / "bundle",
                candidate="popularity",
                model_type="popularity",
                run_id="test",
                id_maps_dir=maps,
                items_file=items_file,
            )
        )
        registry.promote(info.version, reason="test")
    return info.version

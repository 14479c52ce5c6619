"""The bandit policy at serving time: follow the policy alias and rerank a request's candidate pool.

`PolicyHolder` polls `policies/{model}/production.json` (written by the feedback step when a policy passes
its off-policy gate) and swaps in the new policy in one reference assignment, like the model holder; with
no alias it holds None and serving keeps its own slot filling. `rerank` is what the ranking code calls:
the pool (raw item ids, best base score first), the base scores and the user's history length in, the
slate order and the exact propensity of every shown item out.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recloop.policy.bandit import LinUCBPolicy
    from recloop.store import ArtifactStore

log = logging.getLogger("recloop.serving")


def rerank(
    policy: LinUCBPolicy,
    pool_items: Sequence[str],
    pool_scores: np.ndarray,
    history_length: int,
    k: int,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(positions into the pool in slot order, propensity of each shown item)."""
    features = policy.space.features(list(pool_items), np.asarray(pool_scores, np.float64), history_length)
    return policy.rank(pool_items, features, rng, k)


class PolicyHolder:
    """The published policy of one model, reloaded when its alias changes."""

    def __init__(self, store: ArtifactStore, model_name: str, poll_interval_s: float):
        self.store = store
        self.model_name = model_name
        self.poll_interval_s = poll_interval_s
        self.current: LinUCBPolicy | None = None
        self.last_error: str | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="recloop-policy-"))

    def check_once(self) -> bool:
        """Load the aliased policy if the alias changed; True if a new policy (or none) was swapped in."""
        from recloop.policy.training import alias_key, load_production_policy

        try:
            info = self.store.stat(alias_key(self.model_name))
            etag = info.etag if info is not None else None
            if etag == self._etag:
                return False
            policy = load_production_policy(self.store, self.model_name, Path(tempfile.mkdtemp(dir=self._dir)))
        except Exception as exc:  # noqa: BLE001 - keep serving with the policy (or none) we have
            message = f"cannot load the bandit policy of {self.model_name!r}: {exc}"
            if message != self.last_error:
                log.warning(message)
            self.last_error = message
            return False
        self.current, self._etag, self.last_error = policy, etag, None
        log.info("bandit policy of %s: %s", self.model_name, policy.name if policy is not None else "none")
        return True

    def start(self) -> None:
        self.check_once()
        self._thread = threading.Thread(target=self._watch, name="recloop-policy-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self.check_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)

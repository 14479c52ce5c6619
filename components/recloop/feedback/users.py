"""Logged pseudonyms -> user ids.

Logs carry HMAC pseudonyms. With `serving.privacy.hmac_key` set, pseudonyms of users known to the
served model versions are mapped back to their ids, so feedback extends those users' histories; otherwise
(or for users the model never saw) the pseudonym is the user id of the appended interactions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recloop.artifacts import Artifact
from recloop.artifacts.kinds import RegisteredModel

if TYPE_CHECKING:
    from recloop.config import PipelineConfig
    from recloop.store import ArtifactStore


class UserResolver:
    """Pseudonym -> user id for users the served model versions know (needs serving.privacy.hmac_key)."""

    def __init__(self, mapping: dict[str, str] | None):
        self.mapping = mapping
        self._recovered: set[str] = set()
        self._kept: set[str] = set()

    @property
    def mode(self) -> str:
        return "hmac" if self.mapping is not None else "pseudonyms"

    @property
    def recovered(self) -> int:
        """Distinct users mapped back to their ids."""
        return len(self._recovered)

    @property
    def kept_pseudonym(self) -> int:
        """Distinct users whose pseudonym stays their id."""
        return len(self._kept)

    def __call__(self, user_key: str | None) -> str | None:
        if user_key is None:
            return None
        if self.mapping is not None and user_key in self.mapping:
            self._recovered.add(user_key)
            return self.mapping[user_key]
        self._kept.add(user_key)
        return user_key


def user_resolver(store: ArtifactStore, cfg: PipelineConfig, model_versions: list[int]) -> UserResolver:
    """A resolver over the users of `model_versions` and the production version of the served model."""
    key = cfg.serving.privacy.hmac_key
    if key is None:
        return UserResolver(None)
    from recloop.eventlog.pseudonym import Pseudonymizer
    from recloop.registry import ModelRegistry

    pseudonym = Pseudonymizer(key.get_secret_value(), "serving.privacy.hmac_key")
    registry = ModelRegistry(store, cfg.serving.model_name or cfg.model_name)
    versions = set(model_versions)
    alias = registry.production()
    if alias is not None:
        versions.add(alias.version)
    mapping: dict[str, str] = {}
    for version in sorted(versions):
        prefix = registry.version_prefix(version)
        if not Artifact.exists(store, prefix):
            continue
        users = RegisteredModel.open(store, prefix).user_ids(columns=["user_id"])
        if users is None:
            continue
        for user_id in users["user_id"].astype(str):
            mapping.setdefault(pseudonym(user_id) or "", user_id)
    return UserResolver(mapping)

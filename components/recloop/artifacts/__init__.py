"""Artifacts: committed folders in the store (`core`) and the typed kinds the steps exchange (`kinds`)."""

from recloop.artifacts.core import (
    MANIFEST,
    STAGING,
    Artifact,
    ArtifactWriter,
    FileEntry,
    Manifest,
    frame_schema,
    run_prefix,
    safe_run_id,
    staging_prefix,
)

__all__ = [
    "MANIFEST",
    "STAGING",
    "Artifact",
    "ArtifactWriter",
    "FileEntry",
    "Manifest",
    "frame_schema",
    "run_prefix",
    "safe_run_id",
    "staging_prefix",
]

"""Saved bundles: a folder with a JSON manifest and one safetensors file of named numpy arrays.

Models (`model.json`) and policies (`policy.json`) are saved this way: no pickle, so a bundle loads without
the code or config that wrote it. `BundleFormat` names a kind's two files and what to re-run when they are
unreadable; it writes bundles and reads them back with errors that say which file is wrong and how to fix it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recloop.errors import ArtifactError


@dataclass(frozen=True)
class BundleFormat:
    kind: str  # "model", "policy": what the folder holds, in error messages
    manifest_name: str
    arrays_name: str
    remedy: str  # what recreates a broken bundle, e.g. "re-run the train step"

    def save(self, path: str | Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
        """Write `arrays` and `manifest` (sorted keys, so equal bundles are equal bytes) into folder `path`."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path / self.arrays_name))
        (path / self.manifest_name).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return path

    def read_manifest(self, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        try:
            return json.loads((path / self.manifest_name).read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{path} is not a {self.kind} bundle: {self.manifest_name} is missing") from None
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path / self.manifest_name} is corrupt ({exc}); {self.remedy}") from None

    def read_arrays(self, path: str | Path) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        try:
            return load_file(str(Path(path) / self.arrays_name))
        except Exception as exc:  # safetensors raises several types for truncated/corrupt files
            raise self.unreadable(path, exc) from None

    def unreadable(self, path: str | Path, exc: Exception) -> ArtifactError:
        """The error for arrays that exist but cannot be used (corrupt, or not what the manifest says)."""
        return ArtifactError(f"{Path(path) / self.arrays_name} cannot be read ({exc}); {self.remedy}")

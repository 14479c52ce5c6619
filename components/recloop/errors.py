"""Errors a user can act on. Each maps to one CLI exit code.

Exit codes: 0 ok, 2 configuration or usage error, 3 data failed validation, 1 anything else.
"""

from __future__ import annotations

# Configuration, usage and data errors: the same input fails the same way, so a retry cannot fix them and
# orchestrators fail the task at once (Airflow: AirflowFailException) instead of retrying.
PERMANENT_EXIT_CODES = frozenset({2, 3})


class RecloopError(Exception):
    """Base for errors with a message meant for the user (no traceback is shown)."""

    exit_code = 1


class ConfigError(RecloopError):
    """The pipeline configuration is invalid. `errors` holds one `path.to.key: problem` line each."""

    exit_code = 2

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"invalid configuration in {source} ({len(errors)} error(s)):\n{lines}")


class UsageError(RecloopError):
    """A command's arguments cannot be acted on as given (an unreadable input file, columns that could mean
    two things); the message names the flag that settles it."""

    exit_code = 2


class DataError(RecloopError):
    """Input data cannot be read or is malformed (missing columns, bad encoding, corrupt file)."""

    exit_code = 3


class InputNotFound(DataError):
    """A configured input path names no file: a configuration error (exit 2), found by `config validate`
    for local paths (and s3:// ones with --check-access) before any step runs. A DataError too, for code
    that treats every unreadable input alike."""

    exit_code = 2


class ValidationFailed(RecloopError):
    """Data failed the validation suite with `on_failure: fail`. `report_uri`: the committed report of the
    failed validation (result and Data Docs), when one was written."""

    exit_code = 3

    def __init__(self, message: str, report_uri: str | None = None):
        super().__init__(message)
        self.report_uri = report_uri


class ArtifactError(RecloopError):
    """An artifact is missing, incomplete (no manifest) or corrupt (hash mismatch)."""


class StoreError(RecloopError):
    """The artifact store could not be reached or refused an operation."""


class ConflictError(StoreError):
    """A compare-and-swap lost a race: the object changed since it was read."""


class NotBlessedError(RecloopError):
    """Publishing was refused because the candidate has no positive blessing."""

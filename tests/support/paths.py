"""Where the repository and the test tree are, for tests that read shipped files."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
# CI clones the repository with ../shared beside it, so the shared MovieLens copy is always there: tests
# that read it fail (through `movielens()`) rather than skip when it is missing.
MOVIELENS = (REPO / ".." / "shared" / "datasets" / "ml-latest-small").resolve()


def movielens() -> Path:
    """The shared ml-latest-small folder; a clear failure when it is not beside the repository."""
    if not (MOVIELENS / "ratings.csv").is_file():
        raise AssertionError(
            f"ml-latest-small is not at {MOVIELENS}: CI and this machine keep it in ../shared/datasets beside the "
            "repository; restore it there (see its README.txt)"
        )
    return MOVIELENS

"""Shipped configs load, and the config loader's promises: exact error paths and messages, secrets-only
interpolation, `extends` layering, `--set` overrides, and paths relative to the declaring file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recloop import config
from recloop.cli import main
from recloop.errors import ConfigError
from support.paths import MOVIELENS, REPO

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))
MINIMAL = {"name": "t", "data": {"interactions": {"path": "events.csv"}}}


def write(path: Path, body: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False))
    return path


def errors_of(path: Path, overrides: list[str] | None = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        config.load(path, overrides, env=env if env is not None else {})
    return exc.value.errors


# ---------------------------------------------------------------------------------------------- shipped configs


def test_the_shipped_configs_are_there() -> None:
    assert {p.name for p in SHIPPED} >= {"demo.yaml", "movielens.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    cfg = config.load(path, env={})
    assert cfg.name == path.stem
    # Data paths and file:// roots were resolved against configs/, so the working directory is irrelevant.
    assert Path(cfg.data.interactions.path).is_absolute()
    if cfg.store.root.startswith("file://"):
        assert cfg.store.root.startswith("file:///")
    assert cfg.source == str(path)


def test_demo_config_points_at_the_demo_data_and_store() -> None:
    cfg = config.load(REPO / "configs" / "demo.yaml", env={})
    assert cfg.data.interactions.path == str(REPO / ".recloop" / "demo" / "data" / "interactions.csv")
    assert cfg.data.items is not None and cfg.data.items.path == str(REPO / ".recloop/demo/data/items.csv")
    assert cfg.data.users is not None and cfg.data.users.path == str(REPO / ".recloop/demo/data/users.csv")
    assert cfg.store.root == f"file://{REPO / '.recloop' / 'demo' / 'store'}"


def test_movielens_config_points_at_the_shared_dataset() -> None:
    cfg = config.load(REPO / "configs" / "movielens.yaml", env={})
    dataset = MOVIELENS
    assert cfg.data.interactions.path == str(dataset / "ratings.csv")
    assert cfg.data.items is not None and cfg.data.items.tags is not None
    assert cfg.data.items.path == str(dataset / "movies.csv")
    assert cfg.data.items.tags.path == str(dataset / "tags.csv")
    assert cfg.data.items.text == "{title}. Genres: {genres}. Tags: {tags}"
    assert cfg.data.items.category == "genres"


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_key_names_the_exact_path(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {**MINIMAL, "validation": {"max_dupe_rate": 0.1}})
    assert errors_of(path) == [
        "validation.max_dupe_rate: unknown key; remove it or check its spelling (see `recloop config schema`) (got 0.1)"
    ]


def test_wrong_type_shows_what_was_given(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        {
            **MINIMAL,
            "validation": {"min_rows": "lots"},
            "data": {"interactions": {"path": "e.csv", "timestamp_unit": "days"}, "chunk_rows": 10},
        },
    )
    assert errors_of(path) == [
        "data.interactions.timestamp_unit: Input should be 's', 'ms', 'us', 'ns' or 'iso' (got 'days')",
        "data.chunk_rows: Input should be greater than or equal to 1000 (got 10)",
        "validation.min_rows: Input should be a valid integer, unable to parse string as an integer (got 'lots')",
    ]


def test_every_problem_is_listed_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {"data": {}, "colour": "blue"})
    with pytest.raises(ConfigError) as exc:
        config.load(path, env={})
    assert str(exc.value) == (
        f"invalid configuration in {path} (3 error(s)):\n"
        "  - name: required key is missing\n"
        "  - data.interactions: required key is missing\n"
        "  - colour: unknown key; remove it or check its spelling (see `recloop config schema`) (got 'blue')"
    )


def test_cli_validate_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "c.yaml", {**MINIMAL, "validation": {"max_dupe_rate": 0.1}})
    assert main(["config", "validate", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "validation.max_dupe_rate: unknown key; remove it or check its spelling" in err
    # demo.yaml's inputs exist only once `recloop demo` generated them: a fresh clone checks the config alone.
    assert main(["config", "validate", "--skip-inputs", str(REPO / "configs" / "demo.yaml")]) == 0


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "name: t\ndata: [unclosed\n")
    (line,) = errors_of(path)
    assert line.startswith(f"{path}: line 3, column 1: not valid YAML (")


# ---------------------------------------------------------------------------------------------- interpolation


def test_env_vars_expand_in_secret_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        {
            **MINIMAL,
            "store": {"root": "s3://bucket/p", "access_key_id": "${KEY_ID}", "secret_access_key": "pre-${SECRET}-post"},
        },
    )
    cfg = config.load(path, env={"KEY_ID": "AKIA1", "SECRET": "s3cr3t"})
    assert cfg.store.access_key_id is not None and cfg.store.access_key_id.get_secret_value() == "AKIA1"
    assert cfg.store.secret_access_key is not None
    assert cfg.store.secret_access_key.get_secret_value() == "pre-s3cr3t-post"
    assert "s3cr3t" not in config.load(path, env={"KEY_ID": "AKIA1", "SECRET": "s3cr3t"}).model_dump_json()


def test_env_vars_elsewhere_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {"name": "${NAME}", "data": {"interactions": {"path": "${DATA}/e.csv"}}})
    allowed = "access_key_id, api_key, api_keys, hmac_key, password, secret_access_key, token"
    assert errors_of(path, env={"NAME": "x", "DATA": "/d"}) == [
        f"name: ${{...}} interpolation is only allowed in secret fields ({allowed}); write the value itself "
        "(got '${NAME}')",
        f"data.interactions.path: ${{...}} interpolation is only allowed in secret fields ({allowed}); write the "
        f"value itself (got '{tmp_path}/${{DATA}}/e.csv')",
    ]


def test_unset_env_var_in_a_secret_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {**MINIMAL, "store": {"root": "s3://bucket", "access_key_id": "${NOPE}"}})
    assert errors_of(path, env={}) == [
        "store.access_key_id: environment variable NOPE is not set; export it or remove the reference"
    ]


# ---------------------------------------------------------------------------------------------- layering


def test_extends_deep_merges_and_resolves_paths_per_file(tmp_path: Path) -> None:
    write(
        tmp_path / "base" / "base.yaml",
        {
            "name": "base",
            "store": {"root": "file://store"},
            "data": {"interactions": {"path": "data/events.csv", "columns": {"user": "uid", "item": "iid"}}},
            "validation": {"on_failure": "quarantine", "min_rows": 10},
        },
    )
    child = write(
        tmp_path / "team" / "child.yaml",
        {
            "extends": "../base/base.yaml",
            "name": "child",
            "data": {"interactions": {"columns": {"item": "movie"}}},
            "validation": {"min_rows": 50},
        },
    )
    cfg = config.load(child, env={})
    assert cfg.name == "child"
    assert (cfg.data.interactions.columns.user, cfg.data.interactions.columns.item) == ("uid", "movie")
    assert (cfg.validation.on_failure, cfg.validation.min_rows) == ("quarantine", 50)
    # Paths declared in base.yaml resolve against base/, not against the child's directory.
    assert cfg.data.interactions.path == str(tmp_path / "base" / "data" / "events.csv")
    assert cfg.store.root == f"file://{tmp_path / 'base' / 'store'}"


def test_extends_cycle_is_reported(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", {"extends": "b.yaml", **MINIMAL})
    write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    assert errors_of(a) == [f"extends: circular reference through {a}"]


def test_set_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {**MINIMAL, "evaluation": {"k": [10]}})
    cfg = config.load(path, ["evaluation.k=[20, 5, 10]", "validation.on_failure=warn", "data.chunk_rows=5000"], env={})
    assert cfg.evaluation.k == [5, 10, 20]
    assert cfg.validation.on_failure == "warn"
    assert cfg.data.chunk_rows == 5000


def test_set_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL)
    assert errors_of(path, ["validation.max_dupe_rate=0.1"]) == [
        "validation.max_dupe_rate: unknown key; remove it or check its spelling (see `recloop config schema`) "
        "(got 0.1) (set by --set: validation.max_dupe_rate=0.1)"
    ]
    with pytest.raises(ConfigError) as exc:
        config.load(path, ["evaluation.k"], env={})
    assert exc.value.errors == ["evaluation.k: expected KEY.PATH=VALUE"]


def test_validate_checks_that_local_inputs_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\nu1,i1,1\n")
    path = write(
        tmp_path / "c.yaml",
        "name: t\ndata:\n  interactions: {path: events.csv}\n  items: {path: no_items.csv, id: item_id}\n"
        "  users: {path: 's3://bucket/users.csv', id: user_id}\n",
    )
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"invalid configuration in {path} (1 error(s))" in err
    assert f"data.items.path: '{tmp_path / 'no_items.csv'}' does not exist; fix the path" in err
    assert main(["config", "validate", "--skip-inputs", str(path)]) == 0  # the config alone is valid
    capsys.readouterr()
    (tmp_path / "no_items.csv").write_text("item_id\ni1\n")
    assert main(["config", "validate", str(path)]) == 0  # s3:// inputs are listed only with --check-access
    assert "valid (pipeline 't'" in capsys.readouterr().out


def test_cli_set_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL)
    assert main(["config", "show", str(path), "--set", "validation.min_rows=7"]) == 0
    assert '"min_rows": 7' in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path / "conf" / "c.yaml",
        {
            "name": "t",
            "store": {"root": "file://../store"},
            "data": {
                "interactions": {"path": "../raw/events-*.csv.gz"},
                "items": {"path": "catalog.parquet", "tags": {"path": "s3://bucket/tags.csv"}},
                "users": {"path": "/abs/users.csv"},
            },
        },
    )
    monkeypatch.chdir("/")  # the working directory must not matter
    cfg = config.load(path, env={})
    assert cfg.store.root == f"file://{tmp_path / 'store'}"
    assert cfg.data.interactions.path == f"{tmp_path / 'conf'}/../raw/events-*.csv.gz"  # globs keep their pattern
    assert cfg.data.items is not None and cfg.data.items.tags is not None
    assert cfg.data.items.path == str(tmp_path / "conf" / "catalog.parquet")
    assert cfg.data.items.tags.path == "s3://bucket/tags.csv"
    assert cfg.data.users is not None and cfg.data.users.path == "/abs/users.csv"


def test_errors_from_overrides_name_the_override_not_the_file(tmp_path: Path) -> None:
    from recloop.config import load
    from recloop.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("name: t\ndata: {interactions: {path: events.csv}}\n")
    with pytest.raises(ConfigError) as failed:
        load(path, ["validation.max_dupe_rate=0.1", "evaluation.k=[5,10]"], overrides_source="the run's param")
    assert failed.value.source == f"the run's param (applied to {path})"
    assert failed.value.errors == [
        "validation.max_dupe_rate: unknown key; remove it or check its spelling (see `recloop config schema`) "
        "(got 0.1) (set by the run's param: validation.max_dupe_rate=0.1)"
    ]
    with pytest.raises(ConfigError) as failed:
        load(path, ["evaluation.k=[0]"])
    assert failed.value.source == f"--set (applied to {path})"
    assert failed.value.errors[0].endswith("(set by --set: evaluation.k=[0])")

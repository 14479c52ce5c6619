#!/usr/bin/env python3
"""Docker HEALTHCHECK for the recloop image (standard library only; runs in a few milliseconds).

The image runs both the serving API and batch pipeline steps. Only `recloop serve` has an HTTP health
endpoint, so the check reads the container's main command line (PID 1, normally
`tini -- /entrypoint serve ...`): for `serve` it requires `GET http://127.0.0.1:PORT/healthz` to answer
2xx within the timeout (PORT from `--port`, default 8000); for anything else it reports healthy, since a
step's liveness is its process. Exit 0 healthy, 1 unhealthy (Docker's contract).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8000
# Words on the command line that stand for the recloop CLI itself (the entrypoint script or the console
# script); the word after them is the recloop subcommand.
LAUNCHERS = {"recloop", "entrypoint", "entrypoint.sh"}


def serve_port(argv: list[str]) -> int | None:
    """The port `recloop serve` listens on for this command line, or None if it is not `serve`."""
    words = list(argv)
    for i, word in enumerate(words):
        if Path(word).name in LAUNCHERS:
            rest = words[i + 1:]
            if rest and Path(rest[0]).name == "recloop":  # `/entrypoint recloop serve ...`
                rest = rest[1:]
            break
    else:
        return None
    if not rest or rest[0] != "serve":
        return None
    port = DEFAULT_PORT
    for j, word in enumerate(rest):
        if word == "--port" and j + 1 < len(rest):
            port = int(rest[j + 1])
        elif word.startswith("--port="):
            port = int(word.split("=", 1)[1])
    return port


def check(port: int, path: str, timeout: float) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed loopback URL)
            return 200 <= response.status < 300, f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url} unreachable: {reason}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cmdline", default="/proc/1/cmdline", help="NUL-separated main command line.")
    parser.add_argument("--path", default="/healthz", help="Health endpoint of the serving API.")
    parser.add_argument("--timeout", type=float, default=3.0, help="Seconds to wait for an answer.")
    args = parser.parse_args(argv)
    try:
        words = [w for w in Path(args.cmdline).read_bytes().decode(errors="replace").split("\0") if w]
    except OSError as exc:
        print(f"cannot read {args.cmdline}: {exc}", file=sys.stderr)
        return 1
    port = serve_port(words)
    if port is None:
        print("not serving: healthy while the process runs")
        return 0
    healthy, message = check(port, args.path, args.timeout)
    print(message)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

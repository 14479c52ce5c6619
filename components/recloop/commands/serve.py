"""`recloop serve`: the online recommendation API (FastAPI under uvicorn).

Secrets are read here, at the edge, and handed down typed: API keys from `serving.auth.api_keys` or
else the RECLOOP_API_KEYS environment variable; the user-id HMAC key from `serving.privacy.hmac_key` or
else RECLOOP_USER_HMAC_KEY. SIGTERM / SIGINT shut down gracefully: requests in flight finish, then the
impression and feedback buffers are written to the store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Serve recommendations over HTTP.")

API_KEYS_ENV = "RECLOOP_API_KEYS"
HMAC_KEY_ENV = "RECLOOP_USER_HMAC_KEY"


@app.command("serve")
def serve(
    config: Annotated[
        Path,
        typer.Option(
            "--config", "-c", envvar="RECLOOP_CONFIG", help="Pipeline config YAML (its `store` and `serving` sections)."
        ),
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 in containers).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    overrides: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override KEY.PATH=VALUE (YAML value).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    access_log: Annotated[
        bool,
        typer.Option(
            help="One line per request (path, status, latency; never the query string, which may hold a user id)."
        ),
    ] = True,
    graceful_timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds requests in flight get to finish on shutdown before the logs are flushed."),
    ] = 20.0,
    blas_threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="Threads per matrix product. 1 (default): concurrent "
            "requests use the cores; BLAS thread pools fighting over "
            "them multiply tail latency.",
        ),
    ] = 1,
) -> None:
    """Serve the registry's production model: recommendations, similar items, feedback, /metrics."""
    # Must precede the first numpy import (loading the config imports the model modules).
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(blas_threads)
    import logging
    import signal

    import uvicorn

    from recloop import config as config_mod
    from recloop.errors import ConfigError
    from recloop.eventlog.pseudonym import Pseudonymizer
    from recloop.serving.app import ServeRuntime, create_app
    from recloop.serving.security import ApiKeys
    from recloop.store import open_store

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("--log-level", [f"use debug, info, warning or error (got {log_level!r})"])
    cfg = config_mod.load(config, overrides or [])
    settings = cfg.serving
    keys_secret = settings.auth.api_keys.get_secret_value() if settings.auth.api_keys else os.environ.get(API_KEYS_ENV)
    keys_source = "serving.auth.api_keys" if settings.auth.api_keys else API_KEYS_ENV
    api_keys = ApiKeys.parse(keys_secret, keys_source)
    hmac_secret = (
        settings.privacy.hmac_key.get_secret_value() if settings.privacy.hmac_key else os.environ.get(HMAC_KEY_ENV)
    )
    if not hmac_secret:
        raise ConfigError(
            str(config),
            [
                f"serving.privacy.hmac_key: no key to pseudonymize user ids with; export {HMAC_KEY_ENV} (>= 16 "
                "random characters, the same on every replica) or set serving.privacy.hmac_key: "
                f"${{{HMAC_KEY_ENV}}}"
            ],
        )
    pseudonymize = Pseudonymizer(hmac_secret, "serving.privacy.hmac_key" if settings.privacy.hmac_key else HMAC_KEY_ENV)

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("recloop.serving.access").setLevel(logging.INFO if access_log else logging.WARNING)
    log = logging.getLogger("recloop.serving")
    if not api_keys.configured:
        log.warning("no API keys configured (%s): /v1/feedback and /v1/admin/* will answer 401", API_KEYS_ENV)

    runtime = ServeRuntime(
        settings=settings,
        model_name=settings.model_name or cfg.model_name,
        store=open_store(cfg.store),
        api_keys=api_keys,
        pseudonymize=pseudonymize,
    )
    application = create_app(runtime)
    server = uvicorn.Server(
        uvicorn.Config(
            application,
            host=host,
            port=port,
            log_level=log_level.lower(),
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=int(graceful_timeout),
            server_header=False,
            proxy_headers=False,
        )
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; with this no-op handler in place that
    # re-raise returns here, so a requested stop exits 0 instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise typer.Exit(1)

"""Serving's impression and feedback log writers: records buffered in memory, written to the store as
Parquet files (record schemas and file layout: `recloop.eventlog.records`).

A log is flushed when it holds `logs.flush_rows` records, every `logs.flush_interval`, and on graceful
shutdown (SIGTERM). A failed write keeps the records for the next attempt. Delivery is at-least-once:
after a crash between a write and its bookkeeping a record may be written twice, so readers de-duplicate
on `request_id` (impressions) and `feedback_id` (feedback).

With `logs.spool_dir`, every feedback record is appended to a local JSON Lines spool and fsync'ed
before the request is acknowledged; spool files are deleted only once their records are in the store,
and any left over (a crash, or a store that stayed down through shutdown) are replayed at start-up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recloop.config import ServingLogsConfig
from recloop.eventlog.records import FEEDBACK, IMPRESSIONS, feedback_schema, impression_schema, log_file_key

if TYPE_CHECKING:
    import pyarrow as pa

    from recloop.serving.metrics import ServingMetrics
    from recloop.store import ArtifactStore

log = logging.getLogger("recloop.serving")

_FINAL_FLUSH_ATTEMPTS = 3


def instance_id() -> str:
    """host-pid-random: distinct per process, so two replicas or restarts never write the same key."""
    host = re.sub(r"[^A-Za-z0-9\-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class LogFull(Exception):
    """The feedback buffer is full (the store has been unreachable); the client should retry later."""


def _to_json(record: dict[str, Any]) -> str:
    return json.dumps(
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in record.items()}, separators=(",", ":")
    )


class EventLog:
    """One buffered log (impressions or feedback)."""

    def __init__(
        self,
        store: ArtifactStore,
        name: str,
        schema: pa.Schema,
        time_field: str,
        settings: ServingLogsConfig,
        instance: str,
        metrics: ServingMetrics | None,
        refuse_when_full: bool,
        spool_dir: Path | None = None,
    ):
        self.store = store
        self.name = name
        self.schema = schema
        self.time_field = time_field
        self.settings = settings
        self.instance = instance
        self.metrics = metrics
        self.refuse_when_full = refuse_when_full
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time
        self._buffer: list[dict[str, Any]] = []
        self._seq = 0
        self._last_flush = time.monotonic()
        self._spool_dir = spool_dir
        self._spool_file: Any = None
        self._pending_spools: list[Path] = []
        self._timestamp_fields = [f.name for f in schema if str(f.type).startswith("timestamp")]
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)
            self._replay_spools()

    # ------------------------------------------------------------------ appending
    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Buffer records; with a spool they are on disk (fsync'ed) when this returns."""
        with self._lock:
            room = self.settings.max_buffer_rows - len(self._buffer)
            if len(records) > room:
                if self.refuse_when_full:
                    raise LogFull(
                        f"the {self.name} log holds {len(self._buffer)} unwritten records (the store "
                        "is unreachable); retry later"
                    )
                # Impressions: keep the newest; count what was dropped.
                drop = len(records) - max(room, 0)
                del self._buffer[:drop]
                if self.metrics is not None:
                    self.metrics.log_dropped.labels(log=self.name).inc(drop)
            if self._spool_dir is not None:
                self._spool_write(records)
            self._buffer.extend(records)
            if self.metrics is not None:
                self.metrics.log_buffered.labels(log=self.name).set(len(self._buffer))

    def due(self, now: float) -> bool:
        n = len(self._buffer)
        return n >= self.settings.flush_rows or (
            n > 0 and now - self._last_flush >= self.settings.flush_interval.total_seconds()
        )

    # ------------------------------------------------------------------ spool
    def _spool_current(self) -> Path:
        assert self._spool_dir is not None
        return self._spool_dir / f"{self.name}-{self.instance}.current.jsonl"

    def _spool_write(self, records: list[dict[str, Any]]) -> None:
        if self._spool_file is None:
            self._spool_file = open(self._spool_current(), "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._spool_file.write("".join(_to_json(r) + "\n" for r in records))
        self._spool_file.flush()
        os.fsync(self._spool_file.fileno())

    def _spool_rotate(self) -> list[Path]:
        """Close the current spool file and mark it pending (its records are being flushed)."""
        if self._spool_file is not None:
            self._spool_file.close()
            self._spool_file = None
            current = self._spool_current()
            if current.exists():
                pending = current.with_name(
                    f"{self.name}-{self.instance}-{self._seq:06d}-{secrets.token_hex(2)}.pending.jsonl"
                )
                os.replace(current, pending)
                self._pending_spools.append(pending)
        return list(self._pending_spools)

    def _replay_spools(self) -> None:
        assert self._spool_dir is not None
        replayed = 0
        for path in sorted(self._spool_dir.glob(f"{self.name}-*.jsonl")):
            records = []
            for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    # A torn last line from a crash mid-write was never acknowledged.
                    log.warning("%s:%d is not a complete record; skipped", path, line_no)
                    continue
                for name in self._timestamp_fields:
                    if record.get(name):
                        record[name] = datetime.fromisoformat(record[name])
                records.append(record)
            self._buffer.extend(records)
            self._pending_spools.append(path)
            replayed += len(records)
        if replayed:
            log.info("replaying %d %s records spooled by an earlier run", replayed, self.name)
            self._last_flush = float("-inf")  # due at once: the flusher writes them first thing

    # ------------------------------------------------------------------ writing
    def flush(self) -> int:
        """Write everything buffered; returns the records written. On failure they stay buffered."""
        with self._flush_lock:
            with self._lock:
                records, self._buffer = self._buffer, []
                spools = self._spool_rotate() if self._spool_dir is not None else []
                self._last_flush = time.monotonic()
            if not records:
                self._delete_spools(spools)
                return 0
            by_day: dict[date, list[dict[str, Any]]] = {}
            for record in records:
                by_day.setdefault(record[self.time_field].astimezone(UTC).date(), []).append(record)
            written = 0
            failed: list[dict[str, Any]] = []
            error: Exception | None = None
            for day, rows in sorted(by_day.items()):
                try:
                    self._write(day, rows)
                    written += len(rows)
                except Exception as exc:  # noqa: BLE001 - keep the records, report, retry later
                    failed.extend(rows)
                    error = exc
            if self.metrics is not None and written:
                self.metrics.log_rows.labels(log=self.name).inc(written)
            if failed:
                with self._lock:
                    self._buffer[:0] = failed
                if self.metrics is not None:
                    self.metrics.log_failures.labels(log=self.name).inc()
                log.warning(
                    "writing %d %s records to %s failed (%s); they stay buffered for the next attempt",
                    len(failed),
                    self.name,
                    self.store.root,
                    error,
                )
            else:
                self._delete_spools(spools)
            if self.metrics is not None:
                self.metrics.log_buffered.labels(log=self.name).set(len(self._buffer))
            return written

    def _delete_spools(self, spools: list[Path]) -> None:
        for path in spools:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(ValueError):
                self._pending_spools.remove(path)

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        """The rows as a table; a row that cannot be converted (a bug upstream) is dropped and logged
        rather than blocking every later flush."""
        import pyarrow as pa

        try:
            return pa.Table.from_pylist(rows, schema=self.schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            good = []
            for row in rows:
                try:
                    pa.Table.from_pylist([row], schema=self.schema)
                    good.append(row)
                except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                    log.error(
                        "dropping a %s record that cannot be stored (%s): %s",
                        self.name,
                        exc,
                        {k: row.get(k) for k in ("request_id", "feedback_id")},
                    )
                    if self.metrics is not None:
                        self.metrics.log_dropped.labels(log=self.name).inc()
            return pa.Table.from_pylist(good, schema=self.schema)

    def _write(self, day: date, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = self._table(rows)
        if table.num_rows == 0:
            return
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self._seq += 1
        key = log_file_key(self.settings.prefix, self.name, day, self.instance, self._seq, datetime.now(UTC))
        self.store.put_bytes(key, sink.getvalue().to_pybytes())

    def close(self) -> None:
        if self._spool_file is not None:
            self._spool_file.close()
            self._spool_file = None


class EventLogs:
    """The impression and feedback logs of one server, and the thread that flushes them."""

    def __init__(
        self,
        store: ArtifactStore,
        settings: ServingLogsConfig,
        metrics: ServingMetrics | None = None,
        instance: str | None = None,
    ):
        self.settings = settings
        self.instance = instance or instance_id()
        spool = Path(settings.spool_dir) if settings.spool_dir else None
        self.impressions = EventLog(
            store,
            IMPRESSIONS,
            impression_schema(),
            "served_at",
            settings,
            self.instance,
            metrics,
            refuse_when_full=False,
        )
        self.feedback = EventLog(
            store,
            FEEDBACK,
            feedback_schema(),
            "received_at",
            settings,
            self.instance,
            metrics,
            refuse_when_full=True,
            spool_dir=spool,
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recloop-log-flusher", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Wake the flusher (a log reached its size threshold)."""
        self._wake.set()

    def _run(self) -> None:
        tick = min(1.0, self.settings.flush_interval.total_seconds())
        while not self._stop.is_set():
            now = time.monotonic()
            for log_ in (self.feedback, self.impressions):
                if log_.due(now):
                    log_.flush()
            self._wake.wait(tick)
            self._wake.clear()

    def close(self) -> None:
        """Stop the flusher and write everything (graceful shutdown). Feedback that still cannot be written
        stays in the spool when there is one; otherwise the loss is logged as an error."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for log_ in (self.feedback, self.impressions):
            for attempt in range(_FINAL_FLUSH_ATTEMPTS):
                log_.flush()
                if log_.buffered == 0:
                    break
                time.sleep(0.5 * (attempt + 1))
            if log_.buffered:
                kept = " (kept in the spool; replayed at the next start)" if log_._spool_dir else ""
                log.error("shutting down with %d %s records not written to the store%s", log_.buffered, log_.name, kept)
            log_.close()

"""Ingest benchmark: throughput and peak memory of the ingest step on a large CSV.

Generates an N-row interactions CSV in a temporary directory (streamed in blocks, so generation itself
stays small), runs the ingest step on it in a child process with a file:// store, and reports rows/s and
the child's peak RSS (getrusage ru_maxrss). Ingest streams in `data.chunk_rows` chunks, so peak RSS must
stay flat as N grows; the run fails (exit 1) if it reaches --limit-mb.

    .venv/bin/python bench/ingest.py                 # 10M rows (about 330 MB of CSV)
    .venv/bin/python bench/ingest.py --rows 1000000  # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BLOCK_ROWS = 1_000_000


def generate_csv(path: Path, rows: int, seed: int = 0) -> None:
    """user_id,item_id,timestamp,rating with string ids, skewed items and a few bad values."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(seed)
    schema = pa.schema(
        [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float64())]
    )
    start = 1_600_000_000
    with pa_csv.CSVWriter(str(path), schema) as writer:
        done = 0
        while done < rows:
            n = min(BLOCK_ROWS, rows - done)
            users = pc.binary_join_element_wise(
                "u", pc.cast(pa.array(rng.integers(0, rows // 50 + 1, n)), pa.string()), ""
            )
            items = pc.binary_join_element_wise("i", pc.cast(pa.array(rng.zipf(1.3, n) % 200_000), pa.string()), "")
            stamps = start + rng.integers(0, 86400 * 365, n)
            ratings = rng.integers(1, 11, n) / 2.0
            writer.write_table(pa.table([users, items, pa.array(stamps, pa.int64()), pa.array(ratings)], schema=schema))
            done += n


def child(config_path: str) -> None:
    """Runs inside the measured process: ingest only, then print the manifest summary as JSON."""
    from recloop import config
    from recloop.artifacts.kinds import RawEvents
    from recloop.steps.base import RunParams, StepContext, run_step
    from recloop.store import open_store

    cfg = config.load(config_path, env={})
    ctx = StepContext(cfg, open_store(cfg.store), "bench", params=RunParams(force=True), log=lambda _: None)
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    manifest = run_step("ingest", ctx)
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - t0,
                "baseline_mb": before_mb,
                "rows": manifest.summary["rows"]["interactions"],
                "issue_rows": manifest.summary["issue_rows"],
                "parquet_bytes": manifest.files[RawEvents.INTERACTIONS].size,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="CSV rows to generate and ingest.")
    parser.add_argument("--chunk-rows", type=int, default=250_000, help="data.chunk_rows for the run.")
    parser.add_argument("--limit-mb", type=float, default=2048, help="Peak RSS the ingest must stay under.")
    parser.add_argument("--workdir", type=Path, default=None, help="Where to put the CSV and store (temp dir).")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0

    with tempfile.TemporaryDirectory(prefix="recloop-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        csv_path = work / "interactions.csv"
        t0 = time.perf_counter()
        generate_csv(csv_path, args.rows)
        gen_s = time.perf_counter() - t0
        config_path = work / "bench.yaml"
        config_path.write_text(
            json.dumps(
                {  # JSON is YAML
                    "name": "bench",
                    "store": {"root": f"file://{work / 'store'}"},
                    "data": {
                        "chunk_rows": args.chunk_rows,
                        "interactions": {"path": str(csv_path), "columns": {"rating": "rating"}},
                    },
                }
            )
        )
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(config_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        ingest_s = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        csv_mb = csv_path.stat().st_size / 1e6

    table = [
        ("rows", f"{args.rows:,}"),
        ("rows ingested", f"{result['rows']:,}"),
        ("csv size", f"{csv_mb:,.0f} MB"),
        ("parquet size", f"{result['parquet_bytes'] / 1e6:,.0f} MB"),
        ("chunk_rows", f"{args.chunk_rows:,}"),
        ("generate", f"{gen_s:,.1f} s"),
        ("ingest step", f"{result['seconds']:,.1f} s (process incl. start-up {ingest_s:,.1f} s)"),
        ("throughput", f"{args.rows / result['seconds']:,.0f} rows/s ({csv_mb / result['seconds']:,.0f} MB/s)"),
        ("peak RSS of ingest", f"{peak_mb:,.0f} MB (before the step: {result['baseline_mb']:,.0f} MB)"),
    ]
    width = max(len(k) for k, _ in table)
    print("ingest benchmark")
    for key, value in table:
        print(f"  {key:<{width}}  {value}")
    rss_ok, rows_ok = peak_mb < args.limit_mb, result["rows"] == args.rows
    print(f"target peak RSS < {args.limit_mb:,.0f} MB: {'met' if rss_ok else 'MISSED'} ({peak_mb:,.0f} MB)")
    print(f"target every valid row ingested: {'met' if rows_ok else 'MISSED'} ({result['rows']:,} of {args.rows:,})")
    return 0 if rss_ok and rows_ok else 1


if __name__ == "__main__":
    sys.exit(main())

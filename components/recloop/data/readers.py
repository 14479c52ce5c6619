"""Streaming readers for the raw sources named in `data`: local paths, globs, directories or `s3://` URIs,
in CSV/TSV, Parquet or JSON Lines, each optionally gzip-compressed.

A source resolves to a sorted list of `SourceFile`s; `open_table(...)` opens one of them as a
`TableReader`, which knows the file's columns before any data is read (so a wrong column mapping fails
at once, naming the config key to fix) and then yields `Chunk`s of at most `chunk_rows` rows. Memory stays
bounded by the chunk size whatever the file size: CSV goes through pyarrow's streaming reader, Parquet
through row-group batches, JSON Lines line by line.

Text formats come back as string columns (empty field -> null), so the caller decides how to parse each
value and can keep rows whose values are bad. Rows that cannot even be split into fields (a CSV line with
the wrong number of fields, a JSON line that is not an object) are reported in `Chunk.broken` with their
row number instead of stopping the read. Structural problems (missing file, empty file, bad encoding,
truncated gzip, corrupt Parquet) raise `DataError` naming the file and the fix.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import fnmatch
import glob
import gzip
import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recloop.errors import DataError, InputNotFound

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from recloop.config import DataConfig, StoreConfig
    from recloop.store import ArtifactStore

# Recognised file name endings, longest first so '.csv.gz' wins over '.gz'.
_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_GZIP_SUFFIXES = (".gz", ".gzip")
_GLOB_CHARS = "*?["
_MAX_HEADER_BYTES = 16 << 20
_JSONL_PROBE_ROWS = 1000
_CSV_BLOCK_BYTES = 512 << 10


@dataclass(frozen=True)
class SourceFile:
    """One input file: where it is (local path or S3 object), its format and whether it is gzip."""

    uri: str  # shown to users and recorded as `source_file`: absolute local path or s3://bucket/key
    format: str  # csv | tsv | parquet | jsonl
    gzip: bool
    size: int
    s3_store: ArtifactStore | None = field(default=None, compare=False, repr=False)
    s3_key: str | None = None

    @contextlib.contextmanager
    def local(self) -> Iterator[Path]:
        """A local path to read: the file itself, or a temporary download of the S3 object."""
        if self.s3_store is None:
            yield Path(self.uri)
            return
        assert self.s3_key is not None
        with tempfile.TemporaryDirectory(prefix="recloop-src-") as tmp:
            try:
                path = self.s3_store.get_file(self.s3_key, Path(tmp) / Path(self.s3_key).name)
            except FileNotFoundError:
                raise DataError(f"{self.uri}: the object disappeared while ingesting; re-run ingest") from None
            yield path


@dataclass
class Chunk:
    """Up to `chunk_rows` rows of one file.

    `rows` holds each row's 1-based data-row number in the file (header excluded). `broken` lists rows
    that could not be split into fields as (row number, why).
    """

    table: pa.Table
    rows: np.ndarray
    broken: list[tuple[int, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- locating


def s3_data_store(uri: str, store_cfg: StoreConfig) -> tuple[ArtifactStore, str]:
    """A store on the bucket of a data URI, with the store section's endpoint, region and credentials.

    Returns the store and the key (or key pattern) inside the bucket.
    """
    from recloop.store import open_store

    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise DataError(f"{uri}: an s3:// data path must name a bucket, like s3://bucket/events/*.csv")
    return open_store(store_cfg, root=f"s3://{bucket}"), key


def infer_format(name: str, fmt: str, config_key: str) -> tuple[str, bool]:
    """(format, gzip) for a file name; `fmt` other than 'auto' forces the format."""
    lower = name.lower()
    gz = lower.endswith(_GZIP_SUFFIXES)
    if gz:
        lower = lower[: lower.rfind(".")]
    if fmt != "auto":
        return fmt, gz
    for ext, found in _EXTENSIONS.items():
        if lower.endswith(ext):
            return found, gz
    raise DataError(
        f"{name}: cannot tell the file format from its name; set {config_key}.format to one of "
        "csv, tsv, parquet, jsonl (gzip is detected from a .gz ending)"
    )


def _known_extension(name: str) -> bool:
    lower = name.lower()
    for suffix in _GZIP_SUFFIXES:
        lower = lower.removesuffix(suffix)
    return any(lower.endswith(ext) for ext in _EXTENSIONS)


def line_of(source_file: str, row: int) -> int | None:
    """The line of a text file that holds data row `row` (1 = the first data row): CSV/TSV have a header
    on line 1 (and, assumed here, no quoted field spanning lines); JSON lines have none. None for Parquet."""
    name = source_file.removesuffix(".gz").lower()
    if name.endswith((".csv", ".tsv", ".txt")):
        return row + 1
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return row
    return None


def position(source_file: str, row: int, compact: bool = False) -> str:
    """Where data row `row` is, as people look for it: 'FILE line N' ('FILE:N' when `compact`) in a text
    file, 'FILE row N' in Parquet."""
    line = line_of(source_file, row)
    if line is None:
        return f"{source_file} row {row}"
    return f"{source_file}:{line}" if compact else f"{source_file} line {line}"


def configured_sources(data: DataConfig) -> list[tuple[str, str, str]]:
    """(config key, path, format) of every input the `data` section names."""
    out: list[tuple[str, str, str]] = [("data.interactions", data.interactions.path, data.interactions.format)]
    if data.items is not None:
        out.append(("data.items", data.items.path, data.items.format))
        if data.items.tags is not None:
            out.append(("data.items.tags", data.items.tags.path, data.items.tags.format))
    if data.users is not None:
        out.append(("data.users", data.users.path, data.users.format))
    return out


def missing_inputs(data: DataConfig, store_cfg: StoreConfig, remote: bool) -> list[str]:
    """`key.path: problem` for each configured input that names no file; s3:// ones only when `remote`."""
    problems = []
    for key, path, fmt in configured_sources(data):
        if path.startswith("s3://") and not remote:
            continue
        try:
            resolve_sources(path, fmt, store_cfg, key)
        except DataError as exc:
            problems.append(str(exc))
    return problems


def resolve_sources(path: str, fmt: str, store_cfg: StoreConfig, config_key: str) -> list[SourceFile]:
    """Every file a configured `path` names (a file, a directory, a glob, or s3:// of either), sorted."""
    if path.startswith("s3://"):
        return _resolve_s3(path, fmt, store_cfg, config_key)
    if "://" in path:
        scheme = path.split("://", 1)[0]
        raise DataError(f"{config_key}.path: unsupported scheme {scheme}:// in {path!r}; use a local path or s3://")
    local = path[len("file://") :] if path.startswith("file://") else path
    if any(c in local for c in _GLOB_CHARS):
        names = [p for p in sorted(glob.glob(local, recursive=True)) if os.path.isfile(p)]
        if not names:
            raise InputNotFound(f"{config_key}.path: no files match {local!r}; check the pattern and directory")
    elif os.path.isdir(local):
        names = sorted(
            str(p)
            for p in Path(local).rglob("*")
            if p.is_file() and not p.name.startswith(".") and (fmt != "auto" or _known_extension(p.name))
        )
        if not names:
            raise InputNotFound(
                f"{config_key}.path: directory {local!r} holds no data files "
                "(.csv, .tsv, .parquet, .jsonl, optionally .gz)"
            )
    elif os.path.isfile(local):
        names = [local]
    else:
        raise InputNotFound(
            f"{config_key}.path: {local!r} does not exist; fix the path (relative paths are "
            "resolved against the config file's directory)"
        )
    out = []
    for name in names:
        abs_name = os.path.abspath(name)
        f, gz = infer_format(abs_name, fmt, config_key)
        out.append(SourceFile(abs_name, f, gz, os.path.getsize(abs_name)))
    return out


def _resolve_s3(uri: str, fmt: str, store_cfg: StoreConfig, config_key: str) -> list[SourceFile]:
    from recloop.errors import StoreError

    try:
        return _list_s3(uri, fmt, store_cfg, config_key)
    except StoreError as exc:
        raise DataError(
            f"{config_key}.path: cannot list {uri} ({exc}); check the bucket in the path, and "
            "store.endpoint_url and the store credentials (S3 data is read with the store's "
            "settings)"
        ) from None


def _list_s3(uri: str, fmt: str, store_cfg: StoreConfig, config_key: str) -> list[SourceFile]:
    store, pattern = s3_data_store(uri, store_cfg)
    bucket = uri[len("s3://") :].partition("/")[0]
    if not any(c in pattern for c in _GLOB_CHARS) and pattern and not pattern.endswith("/"):
        info = store.stat(pattern)
        if info is not None:
            f, gz = infer_format(pattern, fmt, config_key)
            return [SourceFile(uri, f, gz, info.size, store, pattern)]
        pattern = pattern + "/"  # maybe a "directory"
    if pattern.endswith("/") or not pattern:
        listing_prefix, match = pattern.rstrip("/"), None
    else:
        literal = pattern[: min(pattern.find(c) for c in _GLOB_CHARS if c in pattern)]
        listing_prefix, match = literal.rsplit("/", 1)[0] if "/" in literal else "", pattern
    listing = store.list(listing_prefix)
    if match is None:  # a "directory": every data file below it
        keys = [k for k in listing if fmt != "auto" or _known_extension(k)]
    else:
        keys = [k for k in listing if fnmatch.fnmatchcase(k, match)]
    if not keys:
        raise InputNotFound(f"{config_key}.path: no objects match {uri!r}; check the bucket, prefix and pattern")
    out = []
    for key in sorted(keys):
        info = store.stat(key)
        f, gz = infer_format(key, fmt, config_key)
        out.append(SourceFile(f"s3://{bucket}/{key}", f, gz, info.size if info else 0, store, key))
    return out


# ---------------------------------------------------------------------------------------------- reading


def open_table(
    src: SourceFile,
    path: Path,
    *,
    chunk_rows: int,
    config_key: str,
    delimiter: str | None = None,
    encoding: str = "utf-8",
) -> TableReader:
    """A reader for one local file of `src` (see `SourceFile.local`)."""
    if src.size == 0 or path.stat().st_size == 0:
        raise DataError(f"{src.uri}: file is empty; remove it or point {config_key}.path at the right file")
    if src.format in ("csv", "tsv"):
        sep = delimiter or ("\t" if src.format == "tsv" else ",")
        return _CsvReader(src, path, chunk_rows, config_key, sep, encoding)
    if src.format == "parquet":
        return _ParquetReader(src, path, chunk_rows, config_key)
    if src.format == "jsonl":
        return _JsonlReader(src, path, chunk_rows, config_key, encoding)
    raise DataError(f"{src.uri}: unsupported format {src.format!r}; use csv, tsv, parquet or jsonl")


class TableReader:
    """Columns known up front, then chunks of rows. `bytes_read` grows as the file is consumed."""

    src: SourceFile
    columns: list[str]
    bytes_read: int = 0

    def require(self, wanted: dict[str, str]) -> None:
        """Raise DataError naming every mapped column (config key -> column) the file does not have."""
        missing = [(key, col) for key, col in wanted.items() if col not in self.columns]
        if not missing:
            return
        found = ", ".join(repr(c) for c in self.columns) or "none"
        what = "; ".join(f"column {col!r} (set by {key}) not found" for key, col in missing)
        keys = ", ".join(key for key, _ in missing)
        raise DataError(
            f"{self.src.uri}: {what}. Columns found: {found}. Set {keys} to one of the columns found, or fix the file."
        )

    def chunks(self, columns: list[str]) -> Iterator[Chunk]:
        raise NotImplementedError

    def close(self) -> None:
        """Release anything the reader holds open (temporary files)."""


def _rebatch(batches: Iterator[pa.RecordBatch], chunk_rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `chunk_rows` rows (the last may be shorter) from batches of any size."""
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    n_pending = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        n_pending += batch.num_rows
        while n_pending >= chunk_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_rows)
            rest = table.slice(chunk_rows)
            pending = rest.to_batches() if rest.num_rows else []
            n_pending = rest.num_rows
    if n_pending:
        yield pa.Table.from_batches(pending)


def _structural(
    src: SourceFile, exc: BaseException, config_key: str, encoding: str | None, after_row: int | None = None
) -> DataError:
    """Translate a low-level read failure into a DataError that says what to do."""
    text = str(exc)
    where = f" (after data row {after_row})" if after_row is not None else ""
    low = text.lower()
    if isinstance(exc, UnicodeDecodeError) or "utf8" in low or "utf-8" in low or "decode" in low:
        return DataError(
            f"{src.uri}: bytes that are not valid {encoding or 'utf-8'} text{where} ({text}); "
            f"set {config_key}.encoding to the file's encoding (e.g. 'latin-1' or 'cp1252') "
            "or re-export the file as UTF-8"
        )
    if src.gzip and (
        isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile))
        or "compress" in low
        or "gzip" in low
        or "zlib" in low
        or "inflate" in low
    ):
        return DataError(
            f"{src.uri}: gzip data is truncated or corrupt{where} ({text}); re-copy or re-compress the file"
        )
    if src.format == "parquet":
        return DataError(
            f"{src.uri}: not a readable Parquet file{where} ({text}); "
            "the file is corrupt or not Parquet: re-export it or set "
            f"{config_key}.format to its real format"
        )
    if "straddl" in low:
        return DataError(
            f"{src.uri}: a row{where} is longer than {_CSV_BLOCK_BYTES >> 10} KiB or has an "
            f"unbalanced quote ({text}); fix the quoting in the file"
        )
    return DataError(
        f"{src.uri}: cannot be read as {src.format}{where} ({text}); fix the file or set "
        f"{config_key}.format / {config_key}.delimiter"
    )


class _CsvReader(TableReader):
    def __init__(
        self, src: SourceFile, path: Path, chunk_rows: int, config_key: str, delimiter: str, encoding: str
    ) -> None:
        self.src, self.path, self.chunk_rows, self.config_key = src, path, chunk_rows, config_key
        self.delimiter, self.encoding = delimiter, encoding
        self.columns = self._read_header()

    def _stream(self) -> pa.NativeFile:
        import pyarrow as pa

        return pa.input_stream(str(self.path), compression="gzip" if self.src.gzip else None)

    def _read_header(self) -> list[str]:
        try:
            with self._stream() as stream:
                buf = b""
                while b"\n" not in buf and len(buf) < _MAX_HEADER_BYTES:
                    block = stream.read(64 << 10)
                    if not block:
                        break
                    buf += block
        except (OSError, EOFError, zlib.error) as exc:
            raise _structural(self.src, exc, self.config_key, self.encoding) from None
        if not buf.strip():
            raise DataError(
                f"{self.src.uri}: file is empty (no header line); point {self.config_key}.path at the right file"
            )
        line = buf.split(b"\n", 1)[0]
        try:
            decoder = codecs.getincrementaldecoder(self.encoding)()
        except LookupError:
            raise DataError(
                f"{self.config_key}.encoding: unknown encoding {self.encoding!r}; use e.g. 'utf-8' or 'latin-1'"
            ) from None
        try:
            text = decoder.decode(line, final=True)
        except UnicodeDecodeError as exc:
            raise _structural(self.src, exc, self.config_key, self.encoding) from None
        text = text.lstrip("\ufeff").rstrip("\r")
        header = next(csv.reader(io.StringIO(text), delimiter=self.delimiter), [])
        if len(header) == 1 and self.delimiter not in text and any(d in text for d in ",\t;|" if d != self.delimiter):
            guess = next(d for d in ",\t;|" if d in text and d != self.delimiter)
            raise DataError(
                f"{self.src.uri}: the header {text[:120]!r} has no {self.delimiter!r} delimiter but "
                f"contains {guess!r}; set {self.config_key}.delimiter (or .format) to match the file"
            )
        return header

    def chunks(self, columns: list[str]) -> Iterator[Chunk]:
        import numpy as np
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        skipped: list[int] = []  # data-row numbers of rows pyarrow could not split, in file order
        broken: list[tuple[int, str]] = []

        def on_invalid(row: Any) -> str:
            # use_threads=False makes pyarrow count records: number 1 is the header line.
            number = int(row.number) - 1 if row.number is not None else (skipped[-1] + 1 if skipped else 1)
            skipped.append(number)
            snippet = row.text if len(row.text) <= 80 else row.text[:77] + "..."
            broken.append(
                (number, f"row has {row.actual_columns} fields, expected {row.expected_columns}: {snippet!r}")
            )
            return "skip"

        read_opts = pa_csv.ReadOptions(
            use_threads=False,  # keeps invalid-row numbers; on 2 cores it is no slower
            # pyarrow reads up to 32 blocks ahead of the consumer, so the block size bounds memory
            # (16 MiB here, at no cost in speed); _rebatch assembles chunk_rows-row chunks from the batches.
            block_size=_CSV_BLOCK_BYTES,
            encoding=self.encoding,
        )
        parse_opts = pa_csv.ParseOptions(
            delimiter=self.delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
        )
        convert_opts = pa_csv.ConvertOptions(
            include_columns=columns,
            column_types={c: pa.string() for c in columns},
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=True,
        )
        raw = pa.OSFile(str(self.path), "rb")
        stream = pa.CompressedInputStream(raw, "gzip") if self.src.gzip else raw
        valid_rows = 0
        try:
            try:
                reader = pa_csv.open_csv(
                    stream, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts
                )
            except (pa.ArrowException, OSError, EOFError) as exc:
                if "empty csv" in str(exc).lower():
                    raise DataError(
                        f"{self.src.uri}: file is empty; point {self.config_key}.path at the right file"
                    ) from None
                raise _structural(self.src, exc, self.config_key, self.encoding) from None

            def batches() -> Iterator[pa.RecordBatch]:
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                    except (pa.ArrowException, OSError, EOFError) as exc:
                        raise _structural(
                            self.src, exc, self.config_key, self.encoding, after_row=valid_rows + len(skipped)
                        ) from None
                    self.bytes_read = raw.tell()
                    yield batch

            # One chunk of look-ahead, so broken rows after the last good row join the last chunk.
            held: Chunk | None = None
            for table in _rebatch(batches(), self.chunk_rows):
                k = np.arange(valid_rows + 1, valid_rows + table.num_rows + 1, dtype=np.int64)
                valid_rows += table.num_rows
                rows = _skip_numbers(k, skipped)
                last = int(rows[-1])
                mine = [b for b in broken if b[0] < last]
                broken[:] = [b for b in broken if b[0] >= last]
                if held is not None:
                    yield held
                held = Chunk(table.select(columns), rows, mine)
            self.bytes_read = self.src.size
            if held is None:
                held = Chunk(pa.table({c: pa.array([], pa.string()) for c in columns}), np.zeros(0, np.int64))
            held.broken.extend(broken)
            if held.table.num_rows or held.broken:
                yield held
        finally:
            raw.close()


def _skip_numbers(k: np.ndarray, skipped: list[int]) -> np.ndarray:
    """The k-th (1-based) positive integer not in `skipped`, for each k (skipped sorted ascending)."""
    import numpy as np

    if not skipped:
        return k
    s = np.asarray(skipped, dtype=np.int64)
    # s[j] - j counts the valid rows before skipped row j; the k-th valid row lies after it iff that is < k.
    before = s - np.arange(1, len(s) + 1, dtype=np.int64)
    return k + np.searchsorted(before, k, side="left")


class _ParquetReader(TableReader):
    def __init__(self, src: SourceFile, path: Path, chunk_rows: int, config_key: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.src, self.chunk_rows, self.config_key = src, chunk_rows, config_key
        self._tmp: str | None = None
        if src.gzip:
            # Parquet needs random access: inflate to a temporary file first (streamed, bounded memory).
            fd, self._tmp = tempfile.mkstemp(prefix="recloop-", suffix=".parquet")
            try:
                with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as inp:
                    shutil.copyfileobj(inp, out, 8 << 20)
            except (OSError, EOFError, zlib.error) as exc:
                self.close()
                raise _structural(src, exc, config_key, None) from None
            path = Path(self._tmp)
        try:
            self.file = pq.ParquetFile(str(path))
        except (pa.ArrowException, OSError) as exc:
            self.close()
            raise _structural(src, exc, config_key, None) from None
        self.columns = list(self.file.schema_arrow.names)

    def chunks(self, columns: list[str]) -> Iterator[Chunk]:
        import numpy as np
        import pyarrow as pa

        done = 0
        total_rows = max(1, self.file.metadata.num_rows)

        def batches() -> Iterator[pa.RecordBatch]:
            it = self.file.iter_batches(batch_size=self.chunk_rows, columns=columns)
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except (pa.ArrowException, OSError) as exc:
                    raise _structural(self.src, exc, self.config_key, None, after_row=done) from None
                yield batch

        for table in _rebatch(batches(), self.chunk_rows):
            rows = np.arange(done + 1, done + table.num_rows + 1, dtype=np.int64)
            done += table.num_rows
            self.bytes_read = int(self.src.size * done / total_rows)
            yield Chunk(table.select(columns), rows)

    def close(self) -> None:
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None


def _json_text(value: Any) -> str | None:
    """A JSON value as the text a CSV would have held."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


class _JsonlReader(TableReader):
    def __init__(self, src: SourceFile, path: Path, chunk_rows: int, config_key: str, encoding: str) -> None:
        self.src, self.path, self.chunk_rows, self.config_key, self.encoding = (
            src,
            path,
            chunk_rows,
            config_key,
            encoding,
        )
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"{config_key}.encoding: unknown encoding {encoding!r}; use e.g. 'utf-8'") from None
        self._lines = self._records()
        # Columns are the keys seen in the first records, in order of first appearance; a small probe
        # keeps checking a mapping cheap.
        self._first = self._next_chunk(min(self.chunk_rows, _JSONL_PROBE_ROWS))
        seen: dict[str, None] = {}
        for record in self._first[0]:
            seen.update(dict.fromkeys(record))
        self.columns = list(seen)

    def _records(self) -> Generator[tuple[int, dict | None, str | None], None, None]:
        raw = open(self.path, "rb")
        binary: Any = gzip.GzipFile(fileobj=raw, mode="rb") if self.src.gzip else raw
        text = io.TextIOWrapper(binary, encoding=self.encoding, newline="\n")
        row = 0
        try:
            while True:
                try:
                    line = text.readline()
                except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
                    raise _structural(self.src, exc, self.config_key, self.encoding, after_row=row) from None
                if not line:
                    return
                self.bytes_read = raw.tell()
                line = line.strip().lstrip("\ufeff")
                if not line:
                    continue
                row += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    snippet = line if len(line) <= 80 else line[:77] + "..."
                    yield row, None, f"line is not valid JSON ({exc.msg}): {snippet!r}"
                    continue
                if not isinstance(record, dict):
                    yield row, None, f"line is a JSON {type(record).__name__}, expected an object"
                    continue
                yield row, record, None
        finally:
            text.close()

    def _next_chunk(self, limit: int) -> tuple[list[dict], list[int], list[tuple[int, str]]]:
        records: list[dict] = []
        rows: list[int] = []
        broken: list[tuple[int, str]] = []
        for row, record, problem in self._lines:
            if record is None:
                broken.append((row, problem or "unreadable line"))
            else:
                records.append(record)
                rows.append(row)
            if len(records) + len(broken) >= limit:
                break
        return records, rows, broken

    def chunks(self, columns: list[str]) -> Iterator[Chunk]:
        import numpy as np
        import pyarrow as pa

        part = self._first
        while part[0] or part[2]:
            records, rows, broken = part
            table = pa.table({c: pa.array([_json_text(r.get(c)) for r in records], pa.string()) for c in columns})
            yield Chunk(table, np.asarray(rows, dtype=np.int64), broken)
            part = self._next_chunk(self.chunk_rows)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._lines.close()


# ---------------------------------------------------------------------------------------------- helpers


def as_strings(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Any column as strings (typed Parquet columns included), nulls kept."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type) or pa.types.is_dictionary(arr.type):
        return pc.cast(arr, pa.string())
    if pa.types.is_floating(arr.type):
        # 31.0 -> "31": float ids from Parquet writers that widened an int column.
        values = arr.to_pylist()
        return pa.array(
            [None if v is None else (str(int(v)) if float(v).is_integer() else repr(v)) for v in values], pa.string()
        )
    try:
        return pc.cast(arr, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return pa.array([_json_text(v) for v in arr.to_pylist()], pa.string())

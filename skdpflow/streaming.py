"""Tables larger than memory: a table read in chunks, and its encoded cells on disk.

``fit`` (and :func:`~skdpflow.distributed.fit_sharded`) accepts, besides a DataFrame, a
path to a CSV file or a Parquet file or dataset, or a zero-argument callable returning a
fresh iterable of DataFrame chunks (:func:`as_source`). The fit reads such a
:class:`TableSource` several times, one pass per stage: a check and count, the DP domain
estimate (only when some column is undeclared), the 1-way histograms, and the encoding.
Each release accumulates the exact statistic over the chunks and adds its noise once, to
the total, so it is the release an in-memory fit makes. The encoded cells go to a
memory-mapped float32 file (:class:`DiskCells`) in a private temporary folder, removed when
the fit ends, failed or not; DP-SGD gathers its Poisson batches from it by row index.

Nothing here reads a statistic that leaves the fit: the row counts and dtypes checked
between passes are input checks for the data holder, as in an in-memory fit.
"""

from __future__ import annotations

import mmap
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from ._validation import InvalidDataError
from .domain import ColumnDomain, Domain

__all__ = ["CHUNK_ROWS", "DiskCells", "TableSource", "as_source", "path_source"]

# Rows per chunk read from a file.
CHUNK_ROWS = 65_536
# Text a declared boolean column may hold (case-insensitive); anything else is an error.
BOOLEAN_TEXT = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
# What a declared column's cells must be, by type (for error messages).
READABLE = {"numerical": "numbers", "datetime": "datetimes",
            "boolean": "booleans (true/false, yes/no or 1/0)"}
# The file-backed pages of the cells a process may keep mapped (counted in its resident
# memory) before they are handed back to the page cache.
RESIDENT_PAGES = 16_384  # 64 MiB of 4 KiB pages
PARQUET_SUFFIXES = (".parquet", ".pq")

ONE_SHOT = ("{what} is a one-shot iterator, but the fit reads the table several times (one "
            "pass to check and count it, one per release, one to encode it). Pass a "
            "zero-argument callable that returns a fresh iterator of DataFrame chunks each "
            "time it is called (for example `lambda: pd.read_csv(path, chunksize=100_000)`), "
            "a path to a CSV or Parquet file, or a DataFrame.")


class TableSource:
    """A table read in DataFrame chunks, once per pass.

    Parameters
    ----------
    open_chunks : callable
        Called once per pass with no argument; returns an iterable of DataFrames (the
        chunks, in the same order each time).
    name : str
        How errors name the source (a path, or "the chunk source").
    """

    def __init__(self, open_chunks: Callable[[], Iterable[pd.DataFrame]], name: str) -> None:
        self._open = open_chunks
        self.name = name
        self.columns: list[str] | None = None
        self.dtypes: dict[str, Any] = {}  # undeclared columns: their one dtype (see scan)

    def __repr__(self) -> str:
        return f"TableSource({self.name})"

    def chunks(self, expect_rows: int | None = None) -> Iterator[pd.DataFrame]:
        """One pass: the non-empty chunks, same columns (checked) and, once :meth:`scan`
        fixed them, the same dtypes of the undeclared columns. ``expect_rows``: the pass
        must give that many rows (the first pass's count), or it fails at its end."""
        opened = self._open()
        if isinstance(opened, pd.DataFrame) or not isinstance(opened, Iterable):
            raise TypeError(f"{self.name} must return an iterable of DataFrame chunks each "
                            f"time it is called, got {type(opened).__name__}.")
        total = 0
        for k, chunk in enumerate(opened):
            if not isinstance(chunk, pd.DataFrame):
                raise TypeError(f"{self.name}: chunk {k} is a {type(chunk).__name__}, not a "
                                "pandas DataFrame.")
            names = list(chunk.columns)
            if self.columns is None:
                self.columns = names
            elif names != self.columns:
                raise InvalidDataError([(
                    f"{self.name}: chunk {k} has the columns {_names(names)} but the first "
                    f"chunk had {_names(self.columns)}: every chunk needs the same columns "
                    "in the same order")])
            if len(chunk) == 0:
                continue
            total += len(chunk)
            if self.dtypes:
                chunk = _cast(chunk, self.dtypes, f"{self.name}: chunk {k}")
            yield chunk
        if expect_rows is not None and total != expect_rows:
            raise InvalidDataError([(
                f"{self.name} gave a different number of rows than in its first pass: the "
                "source must give the same rows each time it is read")])

    def scan(self, declared: Iterable[str], check: Callable[[pd.DataFrame], Any]
             ) -> tuple[pd.DataFrame, int, np.ndarray]:
        """The first pass: check every chunk, fix the dtypes of the undeclared columns.

        An undeclared column's kind (and integer-ness, nullability) follows its dtype, which
        a chunk read alone may not share with the others: integers in one chunk and floats
        in another (a missing value) become floats, booleans and objects objects, as a
        read of the whole table would give them; other mixtures are refused.

        Returns
        -------
        schema : DataFrame
            No rows; the columns and their dtypes (the undeclared ones fixed).
        n_rows : int
        present : ndarray of int
            The non-missing values of each undeclared column (in the schema's order).
        """
        self.columns, self.dtypes = None, {}
        declared = list(declared)
        undeclared: list[str] = []
        seen: dict[str, list[Any]] = {}
        n_rows, present, first = 0, np.zeros(0, dtype=np.int64), None
        for chunk in self.chunks():
            if first is None:
                check(chunk)  # the column names first
                extra = [c for c in declared if c not in chunk.columns]
                if extra:
                    raise ValueError(f"The domain declares columns that are not in the data: "
                                     f"{extra}.")
                first = chunk.iloc[:0]
                undeclared = [c for c in chunk.columns if c not in declared]
                seen = {name: [] for name in undeclared}
                present = np.zeros(len(undeclared), dtype=np.int64)
            else:
                check(chunk)
            n_rows += len(chunk)
            for i, name in enumerate(undeclared):
                present[i] += int(chunk[name].notna().sum())
                if not any(chunk[name].dtype == d for d in seen[name]):
                    seen[name].append(chunk[name].dtype)
        if first is None:
            raise ValueError(f"{self.name} holds no rows: a table needs at least one row "
                             "(and a fit at least 2).")
        dtypes, mixed = {}, []
        for name, found in seen.items():
            dtype = _common_dtype(found)
            if dtype is None:
                mixed.append(name)
            else:
                dtypes[name] = dtype
        if mixed:
            raise InvalidDataError([
                f"column {name!r} has different dtypes in different chunks of {self.name} "
                "(its kind is read from its dtype): declare its domain, or give it one dtype"
                for name in mixed])
        self.dtypes = {n: d for n, d in dtypes.items() if len(seen[n]) > 1}
        return _cast(first, dtypes, self.name), n_rows, present


def _names(names: list[Any]) -> str:
    return repr(names) if len(names) <= 8 else f"{names[:8]!r} (+{len(names) - 8} more)"


def _common_dtype(dtypes: list[Any]) -> Any:
    """The dtype a read of the whole table gives a column read as ``dtypes`` in chunks."""
    if len(dtypes) == 1:
        return dtypes[0]
    if all(isinstance(d, np.dtype) and d.kind in "iuf" for d in dtypes):
        return np.dtype(np.float64)  # integers with a missing value somewhere
    if all(isinstance(d, np.dtype) and d.kind in "bO" for d in dtypes):
        return np.dtype(object)  # booleans with a missing value somewhere
    return None


def _cast(chunk: pd.DataFrame, dtypes: dict[str, Any], where: str) -> pd.DataFrame:
    changed = {n: d for n, d in dtypes.items() if n in chunk and chunk[n].dtype != d}
    if not changed:
        return chunk
    if any(_common_dtype([chunk[n].dtype, d]) != d for n, d in changed.items()):
        raise InvalidDataError([(f"{where}: the dtypes of {sorted(changed)} changed since "
                                 "the first pass: the source must give the same chunks "
                                 "each time")])
    return chunk.astype(changed)


def as_source(X: Any, domain: Any, shard: tuple[int, int] | None = None
              ) -> TableSource | None:
    """``X`` as a :class:`TableSource`, or None for a table held in memory.

    A ``str`` or ``Path``: a CSV or Parquet file (:func:`path_source`; ``shard``: this
    rank's rows). A callable: called once per pass, it returns an iterable of DataFrame
    chunks. A list or tuple of DataFrames: its items. A one-shot iterator (a generator, a
    ``pd.read_csv(..., chunksize=...)`` reader) is refused: the fit reads the table several
    times.
    """
    if isinstance(X, TableSource):
        return X
    if isinstance(X, (str, os.PathLike)):
        from .domain import as_domain

        declared = as_domain(domain) if domain is not None else Domain()
        return path_source(Path(X), declared, shard)
    if isinstance(X, pd.DataFrame):
        return None
    if isinstance(X, Iterator):
        raise TypeError(ONE_SHOT.format(what=f"X ({type(X).__name__})"))
    if callable(X):
        def opened() -> Iterable[pd.DataFrame]:
            chunks = X()
            if isinstance(chunks, Iterator):
                return chunks
            if isinstance(chunks, (list, tuple)):
                return iter(chunks)
            return chunks
        return TableSource(opened, "the chunk source")
    if isinstance(X, (list, tuple)) and X and all(isinstance(c, pd.DataFrame) for c in X):
        return TableSource(lambda: iter(X), "the list of chunks")
    return None


def path_source(path: Path, domain: Domain, shard: tuple[int, int] | None = None
                ) -> TableSource:
    """A CSV file, or a Parquet file or folder of Parquet files (a dataset), in chunks.

    CSV: declared columns are read as text and converted by their domain type, the others
    inferred by pandas chunk by chunk (see :meth:`TableSource.scan`). Parquet: the columns
    as stored. ``shard=(rank, ranks)``: only the rows ``i`` with ``i % ranks == rank``.
    """
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist.")
    if path.is_dir() or path.suffix.lower() in PARQUET_SUFFIXES:
        return TableSource(lambda: _parquet_chunks(path, shard), str(path))
    _check_header(path)
    return TableSource(lambda: _csv_chunks(path, domain, shard), str(path))


def _parquet_chunks(path: Path, shard: tuple[int, int] | None) -> Iterator[pd.DataFrame]:
    try:
        import pyarrow as pa
        import pyarrow.dataset as ds
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow).") \
            from None
    try:
        # One batch read ahead, one thread: arrow's defaults keep 16 batches in memory.
        batches = ds.dataset(path, format="parquet").to_batches(
            batch_size=CHUNK_ROWS, batch_readahead=1, fragment_readahead=1, use_threads=False)
        start = 0
        for batch in batches:
            if shard is not None:
                rank, ranks = shard
                first = (rank - start) % ranks
                start += batch.num_rows
                batch = batch.take(pa.array(np.arange(first, batch.num_rows, ranks)))
            yield batch.to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path} is not a readable Parquet file or dataset "
                         f"({_first_line(exc)}).") from None


def _csv_chunks(path: Path, domain: Domain, shard: tuple[int, int] | None
                ) -> Iterator[pd.DataFrame]:
    skip = _shard_lines(shard)
    try:
        text_chunks = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                                  skiprows=skip, chunksize=CHUNK_ROWS)
        undeclared, inferred, start = None, None, 0
        for text in text_chunks:
            if undeclared is None:
                undeclared = [c for c in text.columns if c not in domain.columns]
                if undeclared:
                    inferred = pd.read_csv(path, usecols=undeclared, skiprows=skip,
                                           chunksize=CHUNK_ROWS)
            where = f"{path}, rows {start + 1} to {start + len(text)}: "
            start += len(text)
            columns = _parse_declared(text, domain,
                                      [c for c in text.columns if c in domain.columns], where)
            if undeclared:
                guessed = next(inferred)
                columns.update({name: guessed[name] for name in undeclared})
            yield pd.DataFrame({name: columns[name] for name in text.columns})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable CSV file ({_first_line(exc)}).") from None


def _shard_lines(shard: tuple[int, int] | None) -> Any:
    if shard is None:
        return None
    rank, ranks = shard
    return lambda i: i > 0 and (i - 1) % ranks != rank  # line 0: the header


class DiskCells:
    """Every row's cells ``[lo, hi]`` (rows x dims, float32) in a memory-mapped file.

    The file (``rows x 2 x dims`` float32, an ``.npy``) lies in a folder of its own made by
    :func:`tempfile.mkdtemp` (mode 0700, under ``TMPDIR``); :meth:`close` removes it (use
    it as a context manager). Rows are appended in order, chunk by chunk, and gathered by
    sorted row index. The mapped pages a process has written count in its resident memory
    until handed back: every ``RESIDENT_PAGES`` pages written, they are (``madvise``
    ``MADV_DONTNEED``: the data stay in the file and the page cache); rows are gathered
    with reads of the file, which map nothing. So the resident memory stays bounded
    whatever the number of rows.

    Parameters
    ----------
    n_rows, n_dims : int
    directory : str or None, default=None
        Where to make the folder (None: :func:`tempfile.gettempdir`).
    """

    def __init__(self, n_rows: int, n_dims: int, directory: str | None = None) -> None:
        self.folder = tempfile.mkdtemp(prefix="skdpflow-cells-", dir=directory)
        self.n_rows, self.n_dims, self.filled = int(n_rows), int(n_dims), 0
        self._row_bytes = 8 * self.n_dims  # lo and hi, float32
        self._touched = 0
        self._path = os.path.join(self.folder, "cells.npy")
        self._fd: int | None = None
        self.array: np.memmap | None = None
        try:
            if self.n_rows and self.n_dims:
                self.array = np.lib.format.open_memmap(
                    self._path, mode="w+", dtype=np.float32,
                    shape=(self.n_rows, 2, self.n_dims))
                self._header = int(self.array.offset)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return self.n_rows

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Write the next ``len(lo)`` rows."""
        k = len(lo)
        if self.filled + k > self.n_rows:
            raise ValueError(f"more rows than the {self.n_rows} of the first pass: the source "
                             "must give the same rows each time.")
        if self.array is not None:
            self.array[self.filled:self.filled + k, 0] = lo
            self.array[self.filled:self.filled + k, 1] = hi
            self._touch(k * self._row_bytes // mmap.PAGESIZE + 2)
        self.filled += k

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cells of rows ``idx`` (sorted int64), as two contiguous float32 arrays.

        Read from the file (``os.preadv``, one call per run of consecutive rows, in file
        order), not through the mapping: a read fault on a mapped file maps the whole
        page-cache folio around it (up to megabytes on recent kernels), so a batch of
        rows spread over the file would map most of it into the process.
        """
        block = np.empty((len(idx), 2, self.n_dims), dtype=np.float32)
        if self.array is not None and len(idx):
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDONLY)
            starts = np.flatnonzero(np.diff(idx, prepend=idx[0] - 2) != 1)
            ends = np.append(starts[1:], len(idx))
            for a, b in zip(starts.tolist(), ends.tolist()):
                view = memoryview(block[a:b]).cast("B")
                offset, done = self._header + int(idx[a]) * self._row_bytes, 0
                while done < len(view):
                    got = os.preadv(self._fd, [view[done:]], offset + done)
                    if got <= 0:
                        raise OSError(f"could not read the cells file {self._path}.")
                    done += got
        return np.ascontiguousarray(block[:, 0]), np.ascontiguousarray(block[:, 1])

    def _touch(self, pages: int) -> None:
        self._touched += pages
        if self._touched >= RESIDENT_PAGES:
            self.release_pages()

    def release_pages(self) -> None:
        """Hand the mapped pages back (they stay in the file; the next read maps them)."""
        self._touched = 0
        handle = getattr(self.array, "_mmap", None)
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if handle is not None and advice is not None and hasattr(handle, "madvise"):
            handle.madvise(advice)

    def close(self) -> None:
        """Unmap and remove the file and its folder (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.array = None
        shutil.rmtree(self.folder, ignore_errors=True)


# ------------------------------------------------------------- whole files
def _read_data(path: Path, domain: Domain, shard: tuple[int, int] | None = None
               ) -> pd.DataFrame:
    """A CSV or Parquet file (by its suffix); ``shard=(rank, ranks)``: only its rows ``i``
    with ``i % ranks == rank``."""
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path, shard)
    return _read_csv(path, domain, shard)


def _read_parquet(path: Path, shard: tuple[int, int] | None = None) -> pd.DataFrame:
    """A Parquet file's columns as stored (their types are the file's); ``shard``: every
    ``ranks``-th row from ``rank``, read batch by batch."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        handle = pq.ParquetFile(path)
        if shard is None:
            return handle.read().to_pandas()
        rank, ranks = shard
        parts, start = [], 0
        for batch in handle.iter_batches():
            first = (rank - start) % ranks
            parts.append(batch.take(pa.array(np.arange(first, batch.num_rows, ranks))))
            start += batch.num_rows
        return pa.Table.from_batches(parts, schema=handle.schema_arrow).to_pandas()
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow).") \
            from None
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path} is not a readable Parquet file ({_first_line(exc)}).") \
            from None


def _read_csv(path: Path, domain: Domain, shard: tuple[int, int] | None = None
              ) -> pd.DataFrame:
    """Read a CSV file: declared columns by their domain type, never by pandas inference.

    Declared columns are read as text (only an empty field is missing) and converted by
    :func:`_parse_column`. Undeclared columns keep pandas inference, column by column, and a
    warning on stderr names them: their kind (number or category) then depends on the rows.

    Raises
    ------
    InvalidDataError
        Listing every declared column with cells its type cannot read (counted, not quoted).
    """
    _check_header(path)
    skip = None if shard is None else (
        lambda i: i > 0 and (i - 1) % shard[1] != shard[0])  # line 0: the header
    text = _read_text_csv(path, skip)
    undeclared = [c for c in text.columns if c not in domain.columns]
    columns = _parse_declared(text, domain, [c for c in text.columns if c in domain.columns])
    if undeclared:
        print(f"skdpflow: warning: undeclared column(s) {undeclared}: their kind (number or "
              "category) is inferred from the rows; declare them in --domain to keep the "
              "schema public", file=sys.stderr)
        inferred = pd.read_csv(path, usecols=undeclared, skiprows=skip)
        columns.update({name: inferred[name] for name in undeclared})
    return pd.DataFrame({name: columns[name] for name in text.columns})


def _check_header(path: Path) -> None:
    """Refuse repeated column names (pandas would rename them ``a.1`` silently)."""
    from ._validation import duplicate_names

    try:
        header = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable CSV file ({_first_line(exc)}).") from None
    repeated = duplicate_names(header)
    if repeated:
        problem = f"{path}: column name(s) {repeated} given more than once: each column " \
                  "needs its own name"
        raise InvalidDataError([problem])


def _read_text_csv(path: Path, skiprows: Any = None) -> pd.DataFrame:
    """Every cell as text (an empty field is missing), with errors naming the file."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                           skiprows=skiprows)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable CSV file ({_first_line(exc)}).") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else "empty"


def _parse_declared(text: pd.DataFrame, domain: Domain, names: list[str], where: str = ""
                    ) -> dict[str, pd.Series]:
    """The declared columns ``names`` of a text frame, each read by its domain type.

    Raises
    ------
    InvalidDataError
        Listing every column with cells its type cannot read (counted, never quoted).
    """
    columns, problems = {}, []
    for name in names:
        columns[name], bad = _parse_column(text[name], domain[name])
        if bad:
            problems.append(f"{where}column {name!r}: {bad} cell(s) are not "
                            f"{READABLE[domain[name].type]}")
    if problems:
        raise InvalidDataError(problems)
    return columns


def _parse_column(text: pd.Series, col: ColumnDomain) -> tuple[pd.Series, int]:
    """A text column in its declared type, and the number of non-empty cells it cannot read.

    Categories stay text: they match the declared categories by canonical string.
    """
    if col.type == "numerical":
        values = pd.to_numeric(text.str.strip(), errors="coerce")
    elif col.type == "datetime":
        values = pd.to_datetime(text, errors="coerce", format="mixed")
    elif col.type == "boolean":
        values = text.str.strip().str.lower().map(BOOLEAN_TEXT).astype(object)
    else:
        return text, 0
    return values, int((values.isna() & text.notna()).sum())

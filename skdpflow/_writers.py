"""Write a table chunk by chunk: Parquet (pyarrow) or CSV, chosen by the file's suffix.

Every chunk is written with one schema fixed before the first, from the public domain (never
from the rows), so the file's column types never depend on what one chunk happens to hold
(a chunk whose categorical column is all missing is still a string column).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from .domain import Domain
from .report import MissingDependencyError

__all__ = ["PARQUET_SUFFIXES", "CSV_SUFFIXES", "MissingDependencyError", "TableWriter",
           "table_format"]

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")


def table_format(path: str | Path) -> str:
    """``"parquet"`` or ``"csv"`` from the file name's suffix.

    Raises
    ------
    ValueError
        Another suffix.
    """
    name = Path(path).name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise ValueError(f"{path}: cannot tell the file format from its name; use a name ending "
                     f"in {', '.join(PARQUET_SUFFIXES + CSV_SUFFIXES)}.")


def require_pyarrow() -> Any:
    """``pyarrow`` (with its Parquet module), or an error naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "Writing Parquet needs pyarrow: pip install \"skdpflow[parquet]\" (or write a "
            ".csv file).") from None
    return pyarrow


class TableWriter:
    """Writes chunks of one table to ``path`` (an open-once, append-per-chunk writer).

    Parameters
    ----------
    path : Path
        The file to write (the caller makes the write atomic).
    fmt : {"parquet", "csv"}
    domain : Domain
        Gives each column's type (Parquet schema).
    columns : list of str
        The columns, in order.
    compress : bool, default=False
        gzip the CSV text (``.csv.gz``).
    """

    def __init__(self, path: Path, fmt: str, domain: Domain, columns: list[str],
                 compress: bool = False) -> None:
        self.fmt = fmt
        self.columns = list(columns)
        self._first = True
        if fmt == "parquet":
            pa = require_pyarrow()
            self.schema = arrow_schema(domain, self.columns)
            self._writer = pa.parquet.ParquetWriter(str(path), self.schema)
        else:
            self._handle = (gzip.open(path, "wt", encoding="utf-8", newline="") if compress
                            else open(path, "w", encoding="utf-8", newline=""))

    def write(self, chunk: pd.DataFrame) -> None:
        chunk = chunk[self.columns]
        if self.fmt == "parquet":
            import pyarrow as pa

            table = pa.Table.from_pandas(chunk, schema=self.schema, preserve_index=False)
            self._writer.write_table(table)
        else:
            chunk.to_csv(self._handle, header=self._first, index=False)
        self._first = False

    def close(self) -> None:
        if self.fmt == "parquet":
            self._writer.close()
        else:
            self._handle.close()


def arrow_schema(domain: Domain, columns: list[str]) -> Any:
    """The Arrow schema of sampled rows, from the domain alone.

    Raises
    ------
    ValueError
        A categorical column whose declared categories mix types that one Parquet column
        cannot hold (numbers and text, say): write CSV instead.
    """
    import pyarrow as pa

    fields = []
    for name in columns:
        col = domain[name]
        if col.type == "numerical" and col.integer:
            kind = pa.int64()
        elif col.type == "numerical":
            kind = pa.float64()
        elif col.type == "boolean":
            kind = pa.bool_()
        elif col.type == "datetime":
            kind = pa.timestamp("ns", tz=col.timezone)
        else:
            try:
                kind = pa.array(list(col.categories) + ([col.other] if col.other else [])).type
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                kind = None
            if kind is None or pa.types.is_null(kind):
                raise ValueError(f"column {name!r}: its categories mix types that one Parquet "
                                 "column cannot hold; write a .csv file instead.")
        fields.append(pa.field(name, kind, nullable=True))
    return pa.schema(fields)


def rechunk(frames: Iterator[pd.DataFrame], size: int) -> Iterator[pd.DataFrame]:
    """The rows of ``frames``, in order, as frames of ``size`` rows (the last may be short)."""
    held: list[pd.DataFrame] = []
    count = 0
    for frame in frames:
        while len(frame):
            take = min(size - count, len(frame))
            held.append(frame.iloc[:take])
            count += take
            frame = frame.iloc[take:]
            if count == size:
                yield _joined(held)
                held, count = [], 0
    if held:
        yield _joined(held)


def _joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True)


__all__ += ["arrow_schema", "rechunk", "require_pyarrow"]

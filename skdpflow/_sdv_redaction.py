"""Keep SDV from logging or quoting the private rows while the SDV adapter fits on them.

Two leaks outside the differential-privacy guarantee, both in SDV's own code:

- **Logs.** SDV's synthesizer event logger (``SingleTableSynthesizer``) records
  ``'TOTAL NUMBER OF ROWS': len(data)`` at INFO level in ``fit`` and ``fit_processed_data``:
  the exact size of the private table, written to ``sdv_logs.csv`` or any handler the user
  set up. :func:`sdv_logs_silenced` mutes SDV's (and RDT's) loggers for the length of a fit.
- **Validation errors.** SDV's ``Metadata.validate_data`` quotes the offending values
  (``Key column 'id' contains repeating values: [...]``, ``Invalid values found for
  numerical column 'x': [...]``, unknown foreign-key references). :func:`value_free_errors`
  keeps what names the column and the kind of problem and drops the values.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

__all__ = ["SDV_LOGGER_NAMES", "sdv_logs_silenced", "value_free_errors"]

# SDV's event loggers (sdv/logging/sdv_logger_config.yml) and the packages' module loggers.
SDV_LOGGER_NAMES = (
    "SingleTableSynthesizer",
    "MultiTableSynthesizer",
    "Metadata",
    "SingleTableMetadata",
    "MultiTableMetadata",
    "sdv",
    "rdt",
    "copulas",
)
# Above CRITICAL: no record of any level passes.
SILENT = logging.CRITICAL + 1
WITHHELD = "(values withheld: they come from the private rows)"


def _sdv_loggers() -> list[logging.Logger]:
    """SDV's named loggers and every existing logger below the ``sdv``/``rdt``/... packages.

    Children are listed too: SDV gives some of them their own level, which a parent's
    level would not override.
    """
    prefixes = tuple(f"{name}." for name in SDV_LOGGER_NAMES)
    existing = [name for name in list(logging.root.manager.loggerDict)
                if name.startswith(prefixes)]
    return [logging.getLogger(name) for name in (*SDV_LOGGER_NAMES, *existing)]


@contextlib.contextmanager
def sdv_logs_silenced() -> Iterator[None]:
    """Raise SDV's and RDT's loggers above CRITICAL for the block, then restore their levels.

    The levels are restored even when the block raises. Logger levels are process-wide:
    records other threads send to these loggers meanwhile are dropped too.
    """
    saved = [(logger, logger.level) for logger in _sdv_loggers()]
    try:
        for logger, _ in saved:
            logger.setLevel(SILENT)
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def value_free_errors(errors: Iterable[object], columns: Iterable[str]) -> list[str]:
    """SDV's validation messages without the data values they quote.

    SDV writes each problem as ``<kind of problem> ... column '<name>'``, then, after a
    colon, the offending values (on the same line or the following ones). A line keeps the
    text up to the first colon after its first column name; a line that names no column
    (table headers, value listings, advice) is dropped.

    Parameters
    ----------
    errors : iterable
        ``InvalidDataError.errors`` (strings, each possibly of several lines).
    columns : iterable of str
        Column names of the table and of its metadata.

    Returns
    -------
    list of str
        One message per problem, never empty (a generic one when no line names a column).
    """
    quoted = [f"{q}{name}{q}" for name in columns for q in ("'", '"')]
    out: list[str] = []
    for error in errors:
        for line in str(error).splitlines():
            safe = _value_free_line(line, quoted)
            if safe is not None and safe not in out:
                out.append(safe)
    return out or [f"The table does not match the metadata's structure {WITHHELD}."]


def _value_free_line(line: str, quoted: list[str]) -> str | None:
    """The problem a line states, cut at the colon that opens the values; None if no column."""
    text = line.strip().removeprefix("Error:").strip()
    ends = [text.find(name) + len(name) for name in quoted if name in text]
    if not ends:
        return None
    cut = text.find(":", min(ends))
    kind = (text[:cut] if cut >= 0 else text).rstrip(". ")
    return f"{kind} {WITHHELD}." if cut >= 0 else f"{kind}."

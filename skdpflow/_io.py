"""Files: atomic writes, output paths checked before any private computation, model and
domain files read with errors that name the file.

Every write goes to a temporary file in the target's folder, then ``os.replace`` puts it in
place: an interrupted or failed write never leaves a broken file, and never destroys the one
that was there.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "ModelFileError",
    "OutputPathError",
    "atomic_write",
    "check_input_path",
    "check_output_path",
    "not_a_model",
    "read_domain_spec",
    "read_model_state",
]


class OutputPathError(ValueError):
    """An output path that cannot (or must not) be written; raised before any work."""


class ModelFileError(ValueError):
    """A file that is not a skdpflow model file, or not one this version can read."""


def not_a_model(path: str | Path, reason: str) -> ModelFileError:
    """``<path> is not a skdpflow model file (<reason>).``"""
    return ModelFileError(f"{path} is not a skdpflow model file ({reason}).")


def check_output_path(path: str | Path, *, inputs: Iterable[str | Path] = (),
                      overwrite: bool = True, option: str = "output") -> Path:
    """Refuse an output path that cannot be written, or must not be, before any work.

    Parameters
    ----------
    path : str or Path
        The file to write.
    inputs : iterable of paths, default=()
        Files the command reads: never written over, whatever ``overwrite`` says.
    overwrite : bool, default=True
        Whether an existing file may be replaced.
    option : str, default="output"
        How the message names the path (``"-o"`` on the command line).

    Returns
    -------
    Path

    Raises
    ------
    OutputPathError
        The path is a folder, its folder is missing or not writable, it is one of
        ``inputs``, or it exists and ``overwrite`` is False.
    """
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder: give a file name.")
    if not parent.is_dir():
        raise OutputPathError(f"{option} {path}: the folder {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {path}: the folder {parent} is not writable.")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise OutputPathError(f"{option} {path} is an input of this command: skdpflow "
                                  "never writes over its input; choose another file.")
    if path.exists() and not overwrite:
        raise OutputPathError(f"{option} {path} already exists: pass --force to replace it.")
    return path


def check_input_path(path: str | Path, what: str) -> Path:
    """The path of an input file, or an error in the package's words naming it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file.")
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place.

    The temporary name ends with the target's name, so writers that infer a format or a
    compression from the suffix (``.csv.gz``) see the same one. On any failure, including
    ``KeyboardInterrupt``, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".skdpflow-{secrets.token_hex(4)}-{path.name}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:  # on disk before it replaces anything
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_model_state(path: str | Path) -> dict:
    """The dict a model file holds, read without executing code (``weights_only=True``).

    Raises
    ------
    FileNotFoundError
        No such file.
    ModelFileError
        A folder, an empty or truncated file, another format, or a pickle of anything but
        plain containers and tensors (torch's advice to unpickle it anyway is not passed
        on: that would run whatever code the file holds).
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise not_a_model(path, "it is a folder")
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist.")
    if path.stat().st_size == 0:
        raise not_a_model(path, "the file is empty")
    try:
        state = torch.load(str(path), weights_only=True)
    except pickle.UnpicklingError:
        raise not_a_model(path, "it holds objects other than a model's plain "
                                   "state") from None
    except (EOFError, RuntimeError, OSError, IndexError, ValueError, KeyError, TypeError,
            zipfile.BadZipFile):
        raise not_a_model(path, "unreadable: truncated, or another kind of file") from None
    if not isinstance(state, dict) or "format" not in state:
        raise not_a_model(path, "it holds no skdpflow model")
    return state


def read_domain_spec(path: str | Path, what: str = "domain file") -> Any:
    """The parsed content of a JSON or YAML (``.yaml``/``.yml``) domain file.

    A JSON file may open with ``//`` comment lines (the header of a drafted domain).
    ``what`` names the file in errors (``"rules file"`` for :func:`skdpflow.constraints.
    load_rules`).

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        No such file, or a folder.
    ValueError
        Not valid JSON/YAML (naming the file and line), or a key given twice.
    """
    path = check_input_path(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text.") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml(path, text, what)
    return _parse_json(path, text, what)


def _parse_json(path: Path, text: str, what: str = "domain file") -> Any:
    try:
        return json.loads(_strip_header(text), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path}, line {exc.lineno}, column {exc.colno}: not "
                         f"valid JSON ({exc.msg}).") from None
    except _DuplicateKey as exc:
        raise ValueError(f"{what} {path}: the key {exc.key!r} is given twice.") from None


def _parse_yaml(path: Path, text: str, what: str = "domain file") -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader: builds plain data only
    except _DuplicateKey as exc:
        where = f", line {exc.line}" if exc.line is not None else ""
        raise ValueError(f"{what} {path}{where}: the key {exc.key!r} is given "
                         "twice.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ValueError(f"{what} {path}{where}: not valid YAML ({problem}).") from None


def _strip_header(text: str) -> str:
    """JSON text with its opening ``//`` comment lines blanked (line numbers kept).

    A domain saved from the data (:meth:`~skdpflow.domain.Domain.draft`) starts with such a
    header; JSON itself has no comments.
    """
    lines = text.split("\n")
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("//"):
            break
        lines[i] = ""
    return "\n".join(lines)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int | None = None) -> None:
        self.key, self.line = key, line


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``json`` ``object_pairs_hook``: a dict, refusing a key given twice."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _unique_key_loader() -> type:
    """A ``yaml.SafeLoader`` that refuses a mapping key given twice (PyYAML keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # unhashable keys: PyYAML's own error names them
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links too); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()

"""The documentation site's pages, as mkdocs.yml's nav lists them (sections flattened)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _flatten(entries: list) -> list[str]:
    files = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        files.extend(_flatten(value) if isinstance(value, list) else [value])
    return files


def nav_pages() -> list[Path]:
    """Every page of the nav, in order, as paths under docs/."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return [ROOT / "docs" / name for name in _flatten(config["nav"])]

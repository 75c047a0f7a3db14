"""The documentation site builds with no warning (mkdocs-material + mkdocstrings), every
page is in its nav, README's links reach pages that exist, and the API reference documents
no parameter that the signature lacks."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from _docs import ROOT, nav_pages

# A markdown link's target: [text](target) or [text](target#anchor).
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")
API_DIRECTIVE = re.compile(r"^::: (\S+)((?:\n {4}.*)*)", re.MULTILINE)


def test_every_page_is_in_the_nav():
    listed = nav_pages()
    assert len(listed) == len(set(listed)), "a page is listed twice"
    assert {p.name for p in listed} == {p.name for p in (ROOT / "docs").glob("*.md")}


def test_readme_links_reach_files_that_exist():
    targets = [t for t in LINK.findall((ROOT / "README.md").read_text()) if "://" not in t]
    assert any(t.startswith("docs/") for t in targets), "README links to no page"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_the_link_pattern_finds_targets_and_drops_anchors():
    text = "see [a](docs/a.md), [b](docs/b.md#part) and [c](https://x.org/y)"
    assert LINK.findall(text) == ["docs/a.md", "docs/b.md", "https://x.org/y"]


def _api_objects() -> list[str]:
    """The names docs/api.md renders: each ``:::`` target, or the members it lists."""
    names = []
    for match in API_DIRECTIVE.finditer((ROOT / "docs" / "api.md").read_text()):
        target, options = match.groups()
        members = re.findall(r"^ {8}- (\w+)", options, re.MULTILINE)
        names += [f"{target}.{m}" for m in members] if members else [target]
    return names


def _phantom_parameters(obj: Any) -> list[str]:  # obj: a griffe Class or Function
    """Parameters a numpydoc docstring documents that the signature does not have, and
    names documented twice."""
    documented = [p.name for section in obj.docstring.parse("numpy")
                  if section.kind.value == "parameters" for p in section.value]
    signature = {p.name for p in obj.parameters}
    repeated = sorted({n for n in documented if documented.count(n) > 1})
    return [n for n in documented if n not in signature] + repeated


def test_api_reference_documents_only_real_parameters():
    # A paragraph left inside a numpydoc "Parameters" section renders its first words as
    # parameters ("Every", "facts", ...): the API page then lists parameters that do not exist.
    griffe = pytest.importorskip("griffe")
    logging.getLogger("griffe").setLevel(logging.ERROR)
    package = griffe.load("skdpflow", search_paths=[str(ROOT)], resolve_aliases=True,
                          resolve_external=False)
    checked, wrong = 0, {}
    for name in _api_objects():
        obj = package[name.removeprefix("skdpflow.")]
        obj = obj.final_target if obj.is_alias else obj
        members = [obj] + ([m for k, m in obj.members.items()
                            if not k.startswith("_") and m.is_function] if obj.is_class else [])
        for item in members:
            if (item.is_class or item.is_function) and item.docstring is not None:
                checked += 1
                if phantoms := _phantom_parameters(item):
                    wrong[item.path] = phantoms
    assert checked > 30, checked
    assert not wrong, f"documented parameters missing from the signature: {wrong}"


def test_mkdocs_build_strict(tmp_path):
    # A default test (about 2 s): the `test` extra installs mkdocs, so a missing one fails.
    import importlib.util

    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        assert importlib.util.find_spec(module) is not None, (
            f"{module} is missing: pip install -e '.[test]' (or '.[docs]')")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                          "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, check=False,
                         text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "tstr_scores" in api and "privacy_report" in api

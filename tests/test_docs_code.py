"""Every ```python block of the site (mkdocs.yml's nav) and of README.md runs.

How the blocks are run:

- Each page's ```python blocks run in order, in one namespace (a later block may use what an
  earlier one defined), in a fresh temporary working directory (blocks save model files and
  reports).
- A block whose lines start with ``>>>`` is a REPL session: each ``>>>`` statement runs in the
  page's namespace (``doctest``'s parser splits them). Its shown output is checked loosely,
  because it is a differentially private fit whose figures are noise: when the output shows a
  dict, every ``'key':`` it shows must be a key somewhere in the actual result's repr (the
  values are not compared); any other output is compared with doctest's ``ELLIPSIS`` and
  ``NORMALIZE_WHITESPACE``.
- A block that cannot run (pseudo-code) is preceded in the markdown, on the line before its
  fence, by ``<!-- not-run: reason -->``; the reason is required.
- The integration pages (docs/scikit-learn.md, docs/sdv.md, docs/sdgym.md) are left to
  tests/test_integrations_docs.py, which runs each of their snippets (they need SDV / SDGym
  versions that exclude each other) and checks what the pages say; here it is only checked
  that every block of those pages is one of those snippets.

Speed: the pages fit on the full UCI Adult table (32,561 rows, 6 epochs). The ``fast``
fixture makes ``skdpflow.load_demo()`` return its first 2,000 rows and makes every
``DPFlowSynthesizer.fit`` run with ``epochs=1`` and ``verbose=False``; the code on the page is
otherwise run as written. BLAS / OpenMP pools are limited to one thread (scikit-learn's
HistGradientBoosting in ``evaluate`` slows down by orders of magnitude on busy shared cores).
"""

from __future__ import annotations

import doctest
import re
import warnings
from pathlib import Path

import pytest
from _docs import ROOT, nav_pages

NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->$")
SNIPPET = re.compile(r"^<!--\s*snippet:\s*\w+\s*-->$")
COVERED_ELSEWHERE = {"scikit-learn.md", "sdv.md", "sdgym.md"}  # test_integrations_docs.py


def _pages() -> list[Path]:
    return [*nav_pages(), ROOT / "README.md"]


def _blocks(page: Path) -> list[tuple[int, str, str | None, str]]:
    """(line, code, not-run reason or None, the line before the fence) of each python block."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, before = i, (lines[i - 1].strip() if i else "")
            i += 1
            body = []
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            match = NOT_RUN.match(before)
            blocks.append((start + 1, "\n".join(body) + "\n",
                           match.group(1) if match else None, before))
        i += 1
    return blocks


def _loose_check(want: str, got: object, where: str) -> None:
    keys = re.findall(r"'(\w+)':", want)
    text = repr(got)
    if keys:
        missing = [k for k in dict.fromkeys(keys) if f"'{k}':" not in text]
        assert not missing, f"{where}: the page shows keys the result lacks: {missing}"
        return
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    assert checker.check_output(want, text + "\n", flags), f"{where}: shows {want!r}, got {text}"


def _run_block(code: str, namespace: dict, where: str) -> None:
    if not code.lstrip().startswith(">>>"):
        exec(compile(code, where, "exec"), namespace)  # noqa: S102
        return
    for example in doctest.DocTestParser().get_examples(code):
        source = example.source
        try:
            compiled = compile(source, where, "eval")
        except SyntaxError:
            exec(compile(source, where, "exec"), namespace)  # noqa: S102
            assert not example.want.strip(), f"{where}: a statement with shown output"
            continue
        got = eval(compiled, namespace)
        if example.want.strip():
            _loose_check(example.want, got, f"{where}: {source.strip()}")


@pytest.fixture
def fast(tmp_path, monkeypatch):
    """A 2,000-row Adult, one epoch, quiet fits; a fresh working directory; one thread."""
    from threadpoolctl import threadpool_limits

    import skdpflow

    small = skdpflow.load_demo().head(2000)
    monkeypatch.setattr(skdpflow, "load_demo", lambda: small.copy())
    original_fit = skdpflow.DPFlowSynthesizer.fit

    def fit(self, *args, **kwargs):
        self.set_params(epochs=1, verbose=False)
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(skdpflow.DPFlowSynthesizer, "fit", fit)
    monkeypatch.chdir(tmp_path)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_every_python_fence_is_found_and_every_skip_has_a_reason():
    for page in _pages():
        blocks = _blocks(page)
        assert len(blocks) == page.read_text().count("```python"), page.name
        for line, _, reason, before in blocks:
            assert reason != "", f"{page.name}:{line}: <!-- not-run: --> needs a reason"
            if page.name in COVERED_ELSEWHERE:
                assert SNIPPET.match(before), (
                    f"{page.name}:{line}: not a <!-- snippet: name --> that "
                    "tests/test_integrations_docs.py runs")


RUN_PAGES = [p for p in _pages() if p.name not in COVERED_ELSEWHERE and _blocks(p)]


@pytest.mark.parametrize("page", RUN_PAGES, ids=[p.name for p in RUN_PAGES])
def test_page_code_runs(page, fast):
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for line, code, reason, _ in _blocks(page):
        if reason is None:
            _run_block(code, namespace, f"{page.name}:{line}")
            ran += 1
    assert ran, f"{page.name}: every block is marked not-run"


def test_the_loose_check_catches_a_key_the_result_lacks():
    _loose_check("{'a': 1, 'b': ...}", {"a": 2, "b": {"c": 3}}, "here")
    with pytest.raises(AssertionError, match="'gone'|gone"):
        _loose_check("{'a': 1, 'gone': 2}", {"a": 1}, "here")
    with pytest.raises(AssertionError):
        _loose_check("3.0", 4.0, "here")

"""The HTML report: one self-contained file with its sections, plots and caution."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pandas as pd
import pytest
from conftest import MIXED_DOMAIN, make_mixed_frame

from skdpflow import DPFlowSynthesizer, ValueRange, evaluate
from skdpflow.cli import main
from skdpflow.evaluation import CAUTION
from skdpflow.report import SECTIONS, MissingDependencyError, render_html

PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Sections, images and every URL-bearing attribute of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections, self.images, self.urls, self.tags = [], [], [], set()
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "action") and v]


@pytest.fixture(scope="module")
def model() -> DPFlowSynthesizer:
    synth = DPFlowSynthesizer(epsilon=1.0, epochs=1, random_state=0, verbose=False)
    return synth.fit(make_mixed_frame(200, 0), domain=MIXED_DOMAIN)


@pytest.fixture(scope="module")
def result(model):
    real, test = make_mixed_frame(200, 0), make_mixed_frame(150, 1)
    fake = model.sample(200, random_state=0)
    return evaluate(real, fake, test=test, target="flag", model=model)


@pytest.fixture(scope="module")
def page(result) -> str:
    return render_html(result)


def test_sections_in_order_with_embedded_images(page, result):
    parsed = Page(page)
    assert parsed.sections == [key for key, _ in SECTIONS]
    # one plot per column, the association heatmaps, the budget shares
    assert len(parsed.images) == len(result.distributions) + 2
    for img in parsed.images:
        assert img["alt"]
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix):]).startswith(PNG)


def test_self_contained_and_not_private_in_its_header(page):
    parsed = Page(page)
    assert all(url.startswith("data:") for url in parsed.urls)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|//[a-z]|url\(", text)
    assert {"script", "link", "iframe"}.isdisjoint(parsed.tags)
    header = page.split("<section")[0]
    assert "NOT PRIVATE:" in header and CAUTION.split(":", 1)[1].strip()[:40] in header
    assert "(not private)</title>" in page


def test_tables_hold_the_result_numbers(page, result):
    scores = result.to_frame()
    summary = page.split("id='summary'")[1].split("</section>")[0]
    assert f"<td>{scores.loc['tvd_2way', 'synthetic']:.3f}</td>" in summary
    assert f"<td>{scores.loc['tvd_1way', 'real_data']:.3f}</td>" in summary
    tstr = page.split("id='tstr'")[1].split("</section>")[0]
    for metric in ("auroc_hgb", "auroc_logreg", "accuracy_hgb", "accuracy_logreg"):
        assert f"<td>{metric}</td>" in tstr
    assert f"<td>{scores.loc['accuracy_hgb', 'floor']:.3f}</td>" in tstr
    privacy = page.split("id='privacy'")[1].split("</section>")[0]
    report = result.privacy
    assert f"({report['epsilon_spent']:.4f}, " in privacy
    for mechanism in report["mechanisms"]:
        assert mechanism["name"] in privacy
        assert f"<td>{mechanism['budget_share']:.3f}</td>" in privacy


def test_rules_section_holds_consistency_and_worst_pairs(result):
    real = make_mixed_frame(200, 0)
    rule = ValueRange("age", 18, 50)
    with_rules = evaluate(real, real.iloc[::-1], rules=[rule])
    section = render_html(with_rules).split("id='rules'")[1].split("</section>")[0]
    share = with_rules.consistency.loc[repr(rule), "synthetic"]
    assert _escape(repr(rule)) in section and f"<td>{share:.3f}</td>" in section
    page = render_html(result).split("id='rules'")[1].split("</section>")[0]
    assert "No rules given" in page
    for pair, row in result.worst_pairs.iterrows():
        assert f"<td>{_escape(pair)}</td><td>{row['synthetic']:.3f}</td>" in page
    tstr = render_html(with_rules).split("id='tstr'")[1].split("</section>")[0]
    assert "consistency" not in tstr and "No target given" in tstr


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_without_model_or_target_the_sections_say_so():
    real = pd.DataFrame({"<b>odd</b>": ["x", "y"] * 10, "v": range(20)})
    page = render_html(evaluate(real, real))
    assert Page(page).sections == [key for key, _ in SECTIONS]
    assert "No target given" in page and "No model given" in page
    assert "<b>odd</b>" not in page and "&lt;b&gt;odd&lt;/b&gt;" in page


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys, page):
    real = pd.DataFrame({"a": ["x", "y"] * 5})
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'skdpflow\[report\]'"):
        evaluate(real, real).to_html()
    path = tmp_path / "a.csv"
    real.to_csv(path, index=False)
    out = tmp_path / "r.html"
    assert main(["evaluate", str(path), str(path), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert "needs matplotlib" in captured.err and captured.out == "" and not out.exists()


def _browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)


# Appended to a copy of the page: the browser records which images it decoded.
CHECK = """<script>window.addEventListener('load', () => {
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images-ok', ok);
  document.body.setAttribute('data-sections', [...document.querySelectorAll('section')]
    .map(s => s.id + ':' + s.querySelector('h2').textContent).join('|'));
});</script>"""


@pytest.mark.slow
def test_chromium_renders_the_report(tmp_path, page, result):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    path = tmp_path / "checked.html"
    path.write_text(page.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=5000"]
    dom = subprocess.run(flags + ["--dump-dom", path.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert f'data-images-ok="{len(result.distributions) + 2}"' in dom
    for key, heading in SECTIONS:
        assert f"{key}:{heading}" in dom
    shot = tmp_path / "report.png"
    subprocess.run(flags + ["--window-size=1280,2000", f"--screenshot={shot}",
                            (tmp_path / "checked.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 50_000

"""A self-contained HTML report of an :class:`~skdpflow.evaluation.EvaluationResult`.

One file: plots are PNGs embedded as base64 ``data:`` URLs, styles inline, no script and no
external URL, so it opens offline. Plots need matplotlib (``pip install skdpflow[report]``);
only its object-oriented API is used, so no global backend or pyplot state changes.

The report is **not private** (it compares real and synthetic rows); its header says so.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .evaluation import CAUTION, CONSISTENCY

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .evaluation import ColumnDistribution, EvaluationResult

__all__ = ["MissingDependencyError", "render_html", "require_matplotlib"]

REAL, SYNTHETIC = "#4c72b0", "#dd8452"
# Sections, in page order: (id, heading).
SECTIONS = [("summary", "Scores"), ("tstr", "Train on synthetic, test on real"),
            ("columns", "Columns: real vs synthetic"), ("association", "Pairwise association"),
            ("rules", "Declared rules and the worst pairs"),
            ("privacy", "Privacy report of the model")]
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}
h1{margin-bottom:.3rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
.caution{background:#fff3cd;border:1px solid #e0b000;padding:.7rem 1rem;border-radius:6px}
.meta{color:#555}table{border-collapse:collapse;margin:.6rem 0}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f2f2f2}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:.8rem}
figure{margin:0}figure img{width:100%;height:auto}img.wide{max-width:100%;height:auto}
.note{color:#555;font-style:italic}td.text,th.text{text-align:left}
"""


class MissingDependencyError(ImportError):
    """An optional dependency the report needs is not installed."""


def require_matplotlib() -> Any:
    """matplotlib's ``Figure``, or :class:`MissingDependencyError` naming the extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError(
            "the HTML report needs matplotlib: pip install 'skdpflow[report]' (or pip install "
            "matplotlib)") from None
    return Figure


def render_html(result: EvaluationResult) -> str:
    """The report as one HTML string.

    Raises
    ------
    MissingDependencyError
        If matplotlib is not installed.
    """
    require_matplotlib()
    n = result.n_rows
    meta = (f"{n['real']:,} real rows, {n['synthetic']:,} synthetic rows"
            + (f", {n['test']:,} test rows" if n.get("test") else "")
            + (f", target <code>{_e(result.target)}</code>" if result.target else ""))
    flag, rest = CAUTION.split(":", 1)
    body = [f"<h1>skdpflow evaluation report</h1><p class='meta'>{meta}</p>",
            f"<p class='caution' id='caution'><strong>{_e(flag)}:</strong>{_e(rest)}</p>"]
    parts = {"summary": _summary, "tstr": _tstr, "columns": _columns,
             "association": _association, "rules": _rules, "privacy": _privacy}
    for key, heading in SECTIONS:
        body.append(f"<section id='{key}'><h2>{_e(heading)}</h2>{parts[key](result)}</section>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>skdpflow evaluation report (not private)</title><style>{STYLE}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return _e(value)


def _table(frame: pd.DataFrame, index_name: str = "") -> str:
    text = [False] + [frame[c].dtype == object for c in frame.columns]
    head = "".join(f"<th{' class=text' if t else ''}>{_e(c)}</th>" for c, t in zip(
        [index_name or frame.index.name or ""] + list(frame.columns), text))
    rows = "".join("<tr><td>" + _e(idx) + "</td>"
                   + "".join(_cell(v) for v in row) + "</tr>"
                   for idx, row in zip(frame.index, frame.itertuples(index=False)))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, str):  # text reads left to right; numbers line up on the right
        return f"<td class='text'>{_e(value)}</td>"
    return f"<td>{_number(value)}</td>"


def _png(fig: Figure, alt: str, cls: str = "") -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    attr = f" class='{cls}'" if cls else ""
    return f"<img{attr} alt='{_e(alt)}' src='data:image/png;base64,{data}'>"


def _summary(result: EvaluationResult) -> str:
    marginal = result.scores.loc[[i for i in result.scores.index
                                  if i in ("tvd_1way", "tvd_2way", "quality")]]
    text = ("<p>Total variation distance (TVD) of the 1-way and 2-way marginals (numbers on 20 "
            "quantile bins of the real data; 0 = identical, 1 = disjoint) and the SDMetrics "
            "quality score (1 = identical). <em>real_data</em> compares the real rows with "
            "the test split: two real samples differ this much.</p>")
    notes = "".join(f"<p class='note'>{_e(note)}</p>" for note in result.notes)
    return text + _table(marginal.rename(columns={"real_data": "real data (test split)"})) \
        + notes


def _tstr(result: EvaluationResult) -> str:
    tstr = result.scores.drop(index=["tvd_1way", "tvd_2way", "quality"], errors="ignore")
    tstr = tstr.loc[[not str(i).startswith(CONSISTENCY) for i in tstr.index]]
    if tstr.empty:
        return ("<p class='note'>No target given: pass a test split and a target "
                "(<code>--test test.csv --target y</code>) for train-synthetic-test-real "
                "scores.</p>")
    text = (f"<p>Models trained to predict <code>{_e(result.target)}</code> on the synthetic "
            "rows (<em>synthetic</em>) or on the real rows (<em>real_data</em>, the ceiling), "
            "scored on the real test rows; <em>floor</em> is a constant prediction (the "
            "majority class, AUROC 0.5; the mean for a regression). hgb: "
            "HistGradientBoosting; logreg / linear: one-hot linear model.</p>")
    return text + _table(tstr)


def _columns(result: EvaluationResult) -> str:
    from matplotlib.figure import Figure

    figures = []
    for name, dist in result.distributions.items():
        fig = Figure(figsize=(5.2, 3.0), layout="constrained")
        _plot_column(fig.add_subplot(), name, dist)
        caption = f"{name} ({dist.kind}): 1-way TVD {dist.tvd:.3f}"
        figures.append(f"<figure>{_png(fig, f'{name}: real vs synthetic distribution')}"
                       f"<figcaption>{_e(caption)}</figcaption></figure>")
    text = ("<p>Share of all rows per bin (numbers, datetimes) or per category (the 20 most "
            "frequent real ones; the rest pooled as (other)); the missing share is given "
            "apart.</p>")
    table = _table(result.columns, "column")
    return text + f"<div class='grid'>{''.join(figures)}</div>" \
        + "<h3>Per column</h3>" + table


def _plot_column(ax: Any, name: str, dist: ColumnDistribution) -> None:
    if dist.edges is not None:
        edges = dist.edges
        for values, color, label in [(dist.real, REAL, "real"),
                                     (dist.synthetic, SYNTHETIC, "synthetic")]:
            ax.stairs(values, edges, color=color, label=label, fill=True, alpha=0.45)
        if dist.kind == "datetime":
            ticks = np.linspace(edges[0], edges[-1], 4)
            ax.set_xticks(ticks, [str(pd.Timestamp(0) + pd.Timedelta(days=t))[:10]
                                  for t in ticks])
    else:
        x = np.arange(len(dist.labels))
        ax.bar(x - 0.2, dist.real, 0.4, color=REAL, label="real")
        ax.bar(x + 0.2, dist.synthetic, 0.4, color=SYNTHETIC, label="synthetic")
        ax.set_xticks(x, [label[:14] for label in dist.labels], rotation=60, ha="right",
                      fontsize=7)
    ax.set_title(f"{name}  (missing: real {dist.real_missing:.1%}, synthetic "
                 f"{dist.synthetic_missing:.1%})", fontsize=9)
    ax.set_ylabel("share of rows", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)


def _association(result: EvaluationResult) -> str:
    from matplotlib.figure import Figure

    real, syn = result.association_real, result.association_synthetic
    k = len(real)
    size = min(max(3.0, 0.32 * k + 1.5), 7.0)
    fig = Figure(figsize=(3 * size + 1.5, size + 0.6), layout="constrained")
    axes = fig.subplots(1, 3)
    off_diagonal = ~np.eye(k, dtype=bool)  # the diagonal (always 1) would swamp the scale
    top = max([0.05] + [float(m.to_numpy()[off_diagonal].max()) for m in (real, syn)
                        if k > 1])
    panels = [(real, "real", "viridis", 0, top), (syn, "synthetic", "viridis", 0, top),
              (syn - real, "synthetic - real", "RdBu_r", -top, top)]
    for ax, (matrix, title, cmap, low, high) in zip(axes, panels):
        values = np.where(off_diagonal, matrix.to_numpy(), np.nan)
        image = ax.imshow(values, cmap=cmap, vmin=low, vmax=high)
        ax.set_title(title, fontsize=10)
        ticks = [str(c)[:12] for c in matrix.columns]
        ax.set_xticks(range(k), ticks, rotation=90, fontsize=7)
        ax.set_yticks(range(k), ticks, fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.7)
    text = ("<p>Cramér's V of every pair of columns (numbers on 10 quantile bins): 0 = "
            "independent, 1 = one column determines the other; the diagonal is left blank and the "
            "colour scale stops at the largest value shown. The third panel is the synthetic "
            "minus the real value.</p>")
    worst = result.pairs.head(10).to_frame("tvd_2way")
    return text + _png(fig, "pairwise association: real, synthetic, difference", "wide") \
        + "<h3>Pairs with the largest 2-way TVD</h3>" + _table(worst, "pair")


def _rules(result: EvaluationResult) -> str:
    if result.consistency is None:
        parts = [("<p class='note'>No rules given (<code>rules=</code> or <code>--rules "
                  "rules.yaml</code>): no consistency check.</p>")]
    else:
        parts = [("<p>Share of the rows that keep each declared rule (public facts of the "
                  "schema; a row with a missing value in the rule's columns keeps it): "
                  "<em>real</em> for the real rows, <em>synthetic</em> for the synthetic "
                  "ones.</p>"), _table(result.consistency)]
    parts.append("<h3>Pairs of lowest contingency similarity</h3><p>1 - TVD of the pair's "
                 "2-way distribution (SDMetrics' ContingencySimilarity; numbers on 20 "
                 "quantile bins of the real data): 1 = identical. <em>real_data</em> compares "
                 "the real rows with the test split.</p>")
    worst = result.worst_pairs.rename(columns={"real_data": "real data (test split)"})
    parts.append(_table(worst, "pair"))
    return "".join(parts)


def _privacy(result: EvaluationResult) -> str:
    report = result.privacy
    if report is None:
        return ("<p class='note'>No model given (<code>--model m.skdpflow</code> or "
                "<code>model=</code>): no privacy report.</p>")
    parts = [f"<p>{_e(line)}</p>" for line in _privacy_lines(report)]
    mechanisms = report.get("mechanisms", [])
    if mechanisms:
        frame = pd.DataFrame([{"mechanism": m["name"], "touches": m.get("touches", ""),
                               "noise multiplier": float(m["noise_multiplier"]),
                               "budget share": float(m.get("budget_share", np.nan)),
                               "epsilon alone": float(m["epsilon_alone"])}
                              for m in mechanisms]).set_index("mechanism")
        parts.append(_table(frame))
        parts.append(_png(_budget_figure(frame), "budget shares of the mechanisms", "wide"))
    return "".join(parts)


def _privacy_lines(report: dict) -> list[str]:
    if not report["private"]:
        lines = ["NOT PRIVATE: epsilon = inf (no clipping, no noise, exact marginals)."]
    else:
        lines = [(f"({report['epsilon_spent']:.4f}, {report['delta_spent']:.3g})-DP for one "
                  f"row, accountant {report['accountant']} (target epsilon "
                  f"{report['target_epsilon']:g}); the epsilon spent is recomputed from the "
                  "recorded releases.")]
    domain = report.get("domain", {})
    if domain.get("read_from_data_not_private"):
        lines.append("WARNING: domain read from the data, not covered by the guarantee: "
                     f"{domain['read_from_data_not_private']}")
    if domain.get("estimated_with_dp"):
        lines.append(f"Domain estimated under DP for: {domain['estimated_with_dp']}")
    if domain.get("declared_public") and not domain.get("estimated_with_dp") \
            and not domain.get("read_from_data_not_private"):
        lines.append("Domain declared public for every column.")
    if report.get("noise"):
        lines.append(f"Noise: {report['noise']}")
    return lines


def _budget_figure(frame: pd.DataFrame) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 0.5 * len(frame) + 1.0), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(frame))
    ax.barh(y, frame["budget share"].fillna(0).to_numpy(), color=REAL)
    ax.set_yticks(y, [str(name) for name in frame.index], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the privacy budget", fontsize=8)
    for yi, share in zip(y, frame["budget share"].fillna(0)):
        ax.text(min(share + 0.01, 0.9), yi, f"{share:.0%}", va="center", fontsize=8)
    return fig

"""benchmarks/curves.py: its table and plots from recorded runs (no fit here)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("matplotlib")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "curves.py"


@pytest.fixture(scope="module")
def curves():
    spec = importlib.util.spec_from_file_location("curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs() -> pd.DataFrame:
    rows = []
    for eps, base in [(1.0, 0.6), (math.inf, 0.8)]:
        for seed, shift in [(0, -0.1), (1, 0.1)]:
            rows.append({"dataset": "toy", "epsilon": eps, "seed": seed, "rows": 100,
                         "rows_requested": 100, "domain": "estimated",
                         "auroc_hgb": base + shift, "auroc_hgb_real": 0.9,
                         "tvd_2way": 1 - base, "tvd_2way_real": 0.05,
                         "quality": base, "quality_real": 0.95})
    return pd.DataFrame(rows)


def test_table_gives_mean_and_sd_over_seeds(curves):
    lines = curves.table(_runs()).splitlines()
    assert lines[0] == "| dataset | epsilon | seeds | auroc_hgb | tvd_2way | quality |"
    # seeds 0.5 and 0.7: mean 0.6, sample sd 0.141
    assert lines[2] == "| toy | 1 | 2 | 0.600 (0.141) | 0.400 (0.000) | 0.600 (0.000) |"
    assert lines[3].startswith("| toy | inf | 2 | 0.800 (0.141)")
    assert lines[4] == "| toy | real data | | 0.900 | 0.050 | 0.950 |"


def test_plot_writes_one_png_per_table(curves, tmp_path):
    (path,) = curves.plot(_runs(), tmp_path)
    assert path.name == "curves_toy.png"
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000


def test_mst_runs_get_their_own_rows_and_line(curves, tmp_path):
    mst = _runs().query("epsilon == 1.0").assign(method="mst", auroc_hgb=0.7, quality=0.5)
    runs = pd.concat([_runs(), mst], ignore_index=True)
    lines = curves.table(runs).splitlines()
    assert "| toy | smartnoise MST 1 | 2 | 0.700 (0.000) | 0.400 (0.000) | 0.500 (0.000) |" \
        in lines
    # the skdpflow rows are the same as without MST (rows recorded without a method field)
    assert lines[2] == "| toy | 1 | 2 | 0.600 (0.141) | 0.400 (0.000) | 0.600 (0.000) |"
    (path,) = curves.plot(runs, tmp_path)
    assert path.stat().st_size > 10_000


def test_refused_fits_are_counted_not_scored(curves, tmp_path):
    nan = math.nan
    refused = {"dataset": "toy", "epsilon": 0.1, "rows": 100, "rows_requested": 100,
               "domain": "estimated", "refused": True,
               **{m: nan for m in ("auroc_hgb", "auroc_hgb_real", "tvd_2way",
                                   "tvd_2way_real", "quality", "quality_real")}}
    runs = pd.concat([_runs(), pd.DataFrame([{**refused, "seed": 0}, {**refused, "seed": 1}])],
                     ignore_index=True)
    lines = curves.table(runs).splitlines()
    assert "| toy | 0.1 | 0 (2 refused) | refused: declare the domain |  |  |" in lines
    # the other epsilons and the real-data row are unchanged by the refused runs
    assert "| toy | 1 | 2 | 0.600 (0.141) | 0.400 (0.000) | 0.600 (0.000) |" in lines
    assert lines[-1] == "| toy | real data | | 0.900 | 0.050 | 0.950 |"
    assert len(curves.plot(runs, tmp_path)) == 1

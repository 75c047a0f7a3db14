"""The A/B of the copula-only row bound (docs/benchmarks.md, "The copula-only row bound";
raw output in copula_row_bound.txt and copula_row_bound_runs/).

``benchmarks/suite.py`` with ``skdpflow.privacy.copula.ROW_BOUND_FACTOR`` set from the
environment: 1 is the default (B = the cell means' expected squared norm, sum of the
reliabilities); 100 gives B = D, the bound before (row_bound caps B at D). Run from the
repository root:

    ROW_BOUND_FACTOR=100 SKDPFLOW_THREADS=1 OMP_NUM_THREADS=1 python \\
        benchmarks/results/copula_row_bound_variant.py --methods skdpflow \\
        --datasets bank_marketing default_credit_card kddcup99_10pct --sizes 1000 \\
        --epsilons 1 --seeds 100 ... 139 --out /tmp/k0
    # and ROW_BOUND_FACTOR=1 (--out /tmp/k10), ROW_BOUND_FACTOR=0.7 (--out /tmp/k07)

(The figures in the docs were made with an earlier script that patched the bound into the
code before it was committed; same estimate, same seeds.)
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import skdpflow.privacy.copula as C

C.ROW_BOUND_FACTOR = float(os.environ.get("ROW_BOUND_FACTOR", C.ROW_BOUND_FACTOR))
print("row bound factor:", C.ROW_BOUND_FACTOR, flush=True)
import suite

suite.main()

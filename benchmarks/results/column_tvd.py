"""Per-column 1-way TVD of default fits at some epsilons, and of the real train rows (research).

Usage (from the repository root)::

    SKDPFLOW_DATA=../shared/data python benchmarks/results/column_tvd.py default_credit_card 1000 1,500 0,1,2

Session 10 (2026-12-03) found with it that default_credit_card's numerical columns at 1,000 rows
and epsilon 1 came out at 1-way TVD 0.14-0.32 against 0.07-0.14 with the same bins at epsilon
500 (docs/benchmarks.md, "Histogram bins that follow the noise").
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pandas as pd
import suite
from skdpflow.metrics import marginal_tvd, column_kinds
name = sys.argv[1]; size = int(sys.argv[2]); eps_list = [float(e) for e in sys.argv[3].split(",")]
seeds = [int(s) for s in sys.argv[4].split(",")]
params = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
train, test, target = suite.load(name, size, 2000)
dom = suite.public_domain(name)
kinds = column_kinds(test, dom)
res = {}
for eps in eps_list:
    rows = []
    for s in seeds:
        syn = suite.fit_skdpflow(train, dom, eps, s, params)
        t = marginal_tvd(test, syn, 1, 20, kinds)
        rows.append({k[0]: v for k, v in t.items()})
    res[eps] = pd.DataFrame(rows).mean()
floor = {k[0]: v for k, v in marginal_tvd(test, train, 1, 20, kinds).items()}
res["real"] = pd.Series(floor)
df = pd.DataFrame(res)
df["kind"] = [kinds[c] for c in df.index]
print(df.round(3).to_string()); print(df.drop(columns="kind").mean().round(4))

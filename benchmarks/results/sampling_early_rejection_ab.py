"""The A/B of the early rejection step (docs/benchmarks.md, "Sampling throughput and
memory"): the category weights' rejection right after the discrete heads, the continuous
stages on the kept rows only (after), against rejection after the whole flow (before,
``b9f9fe3``, unpacked with ``git archive b9f9fe3 | tar -x -C /tmp/base``).

``sample(200,000)`` five times on one loaded model, median rows/s, in a fresh process per
side and thread count, alternating before/after, for ``--passes`` passes. The model: a
default Adult fit at epsilon 1 (the category weights keep about 71% of the flow's rows).
Run from the repository root with the machine otherwise idle (other runs SIGSTOPped)::

    python benchmarks/results/sampling_early_rejection_ab.py MODEL --before /tmp/base
"""
import argparse
import subprocess
import sys

CHILD = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
from skdpflow import DPFlowSynthesizer
m = DPFlowSynthesizer.load(sys.argv[2])
m.set_params(n_jobs=int(sys.argv[3]))
m.sample(20_000, random_state=0)
ts = []
for _ in range(5):
    t = time.perf_counter()
    m.sample(200_000, random_state=1)
    ts.append(time.perf_counter() - t)
ts.sort()
print(200_000 / ts[2])
'''

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--before", default="/tmp/base")
parser.add_argument("--after", default=".")
parser.add_argument("--passes", type=int, default=3)
args = parser.parse_args()
results: dict = {}
for p in range(args.passes):
    for jobs in (1, 2):
        for side, tree in (("before", args.before), ("after", args.after)):
            out = subprocess.run([sys.executable, "-c", CHILD, tree, args.model, str(jobs)],
                                 capture_output=True, text=True, check=True)
            rate = float(out.stdout.split()[-1])
            results.setdefault((jobs, side), []).append(rate)
            print(f"pass {p + 1} n_jobs {jobs} {side:6s} {rate:,.0f} rows/s", flush=True)
print("\n| n_jobs | before (rows/s) | after (rows/s) | after / before |")
print("|---|---|---|---|")
for jobs in (1, 2):
    before = sorted(results[(jobs, "before")])[len(results[(jobs, "before")]) // 2]
    after = sorted(results[(jobs, "after")])[len(results[(jobs, "after")]) // 2]
    print(f"| {jobs} | {before:,.0f} | {after:,.0f} | {after / before:.2f} |")

"""kddcup99_10pct, the whole table, fitted from a Parquet file (streamed) instead of a DataFrame.

The train rows of ``discrete_models.py kddcup99_10pct 0`` (the whole table but 2,000 test
rows, shuffled with the suite's fixed seed) are written to a Parquet file in row groups of
50,000; a process of its own (niced, one torch thread) fits ``DPFlowSynthesizer(epsilon=1,
delta=2e-7)`` with the suite's declared domain (from a file: the child never holds the table) **on the
path**, sampling its memory every 0.1
s as ``streaming.py`` does, and saves the model. The parent then samples as many rows as
were fitted and scores them on the same metrics as the in-memory run of
docs/benchmarks.md (a random 50,000 rows of each, 2,000 test rows)::

    OMP_NUM_THREADS=1 python benchmarks/kdd_streaming.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import suite
from streaming import MemorySampler

DATASET = "kddcup99_10pct"
ROW_GROUP = 50_000


def fit_child(path: str, model: str, delta: float) -> dict:
    os.nice(10)
    import torch

    torch.set_num_threads(1)
    from skdpflow import DPFlowSynthesizer, Domain

    domain = Domain.load(Path(path).with_suffix(".domain.json"))  # not the table: its file

    baseline = MemorySampler.read()
    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    synth = DPFlowSynthesizer(epsilon=1.0, delta=delta, random_state=0, verbose=False,
                              n_jobs=1)
    synth.fit(path, domain=domain)
    fit_s = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    peak = {k: max(v, MemorySampler.read()[k]) for k, v in sampler.peak.items()}
    synth.save(model)
    return {"fit_s": round(fit_s, 1), "steps": synth.steps_, "epsilon": round(synth.epsilon_, 4),
            "baseline_rss_mib": round(baseline["VmRSS"]),
            **{f"peak_{k}_mib": round(v) for k, v in peak.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delta", type=float, default=2e-7)
    parser.add_argument("--eval-rows", type=int, default=50_000)
    parser.add_argument("--fit-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_child:
        print(json.dumps(fit_child(*args.fit_child, args.delta)))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skdpflow import DPFlowSynthesizer, evaluate

    train, test, target = suite.load(DATASET, 10**9, 2000)
    domain = suite.public_domain(DATASET)
    folder = Path(tempfile.mkdtemp(prefix="skdpflow-kdd-"))
    path, model = folder / "kdd.parquet", folder / "kdd.skdpflow"
    domain.save(path.with_suffix(".domain.json"))
    pq.write_table(pa.Table.from_pandas(train, preserve_index=False), path,
                   row_group_size=ROW_GROUP)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(folder)}
    out = subprocess.run([sys.executable, __file__, "--fit-child", str(path), str(model),
                          "--delta", str(args.delta)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        print(out.stderr, file=sys.stderr)
        raise SystemExit(out.returncode)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(rows=len(train), parquet_mib=round(path.stat().st_size / 2**20))
    synth = DPFlowSynthesizer.load(model)
    start = time.perf_counter()
    fake = synth.sample(len(train), random_state=0)
    result["sample_s"] = round(time.perf_counter() - start, 1)
    real = train.sample(args.eval_rows, random_state=0)
    scores = evaluate(real, fake.sample(args.eval_rows, random_state=0), test=test,
                      target=target, domain=domain).to_frame()
    for metric in ("tvd_1way", "tvd_2way", "quality", "auroc_hgb"):
        result[metric] = round(float(scores.loc[metric, "synthetic"]), 3)
    print(json.dumps(result), flush=True)
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()


if __name__ == "__main__":
    main()

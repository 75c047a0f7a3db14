"""Sampling throughput and peak memory: ``sample`` and ``sample_to`` on Adult's shape.

Usage (from the repository root)::

    python benchmarks/sampling.py                      # 1M rows, every mode
    python benchmarks/sampling.py --rows 10000000 --modes sample_to_parquet
    python benchmarks/sampling.py --model adult.skdpflow   # a model fitted beforehand

Without ``--model``, fits the bundled Adult table once at epsilon 1 (declared domain, 1
epoch: the model's shape, not its quality, sets the speed). Each mode then runs in its own
process, so its peak RSS (``ru_maxrss``) is its own; the process first loads the model and
samples 10,000 rows (imports, first calls), and the table gives that baseline RSS beside
the peak. Modes:

- ``before``: the code path of ``sample`` before the fast decode (RDT's reverse, one
  thread), kept here as the reference;
- ``sample_1``, ``sample_2``: ``sample(n)`` with ``n_jobs`` 1 and 2 (the whole frame in
  memory);
- ``sample_to_parquet``, ``sample_to_csv``: ``sample_to`` (chunks of 65,536 rows, bounded
  memory) with ``n_jobs=2``; Parquet needs pyarrow.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ["before", "sample_1", "sample_2", "sample_to_parquet", "sample_to_csv"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _before(synth: Any, n: int, seed: int) -> Any:
    """``sample`` before this change: flow.sample, then RDT's reverse of the typed frame."""
    import pandas as pd
    import torch
    from sklearn.utils import check_random_state

    generator = torch.Generator().manual_seed(
        int(check_random_state(seed).randint(0, 2**31 - 1)))
    parts = []
    for start in range(0, n, 65_536):
        with torch.no_grad():
            z = synth.flow_.sample(min(65_536, n - start), generator=generator)
        parts.append(synth.type_layer_.reverse(synth.encoder_.decode(z.double().numpy())))
    return pd.concat(parts, ignore_index=True)


def run_mode(model: str, mode: str, n: int, out_dir: str) -> dict:
    import torch

    from skdpflow import DPFlowSynthesizer

    torch.set_num_threads(1)
    synth = DPFlowSynthesizer.load(model)
    synth.set_params(n_jobs=1)
    synth.sample(10_000, random_state=0)
    baseline = _rss_mb()
    synth.set_params(n_jobs=2 if mode != "sample_1" else 1)
    start = time.perf_counter()
    if mode == "before":
        _before(synth, n, 1)
    elif mode.startswith("sample_to"):
        suffix = ".parquet" if mode.endswith("parquet") else ".csv"
        path = Path(out_dir) / f"fake{suffix}"
        synth.sample_to(path, n, random_state=1, progress=False)
        size_mb = path.stat().st_size / 2**20
    else:
        synth.sample(n, random_state=1)
    seconds = time.perf_counter() - start
    result = {"mode": mode, "rows": n, "seconds": seconds, "rows_per_s": n / seconds,
              "baseline_rss_mb": baseline, "peak_rss_mb": _rss_mb(),
              "load_average": os.getloadavg()[0]}
    if mode.startswith("sample_to"):
        result["file_mb"] = size_mb
    return result


def fit_model(path: str) -> None:
    import torch

    from skdpflow import DPFlowSynthesizer, load_demo, load_demo_domain

    torch.set_num_threads(1)
    synth = DPFlowSynthesizer(epsilon=1.0, epochs=1, random_state=0, verbose=False, n_jobs=1)
    synth.fit(load_demo(), domain=load_demo_domain())
    synth.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--model", help="a fitted model file (default: fit Adult, 1 epoch)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, mode, out_dir = args.child
        print(json.dumps(run_mode(model, mode, args.rows, out_dir)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or os.path.join(tmp, "adult.skdpflow")
        if not args.model:
            fit_model(model)
        print(f"{os.cpu_count()} CPUs, {args.rows:,} rows, load average "
              f"{os.getloadavg()[0]:.2f}", flush=True)
        rows = []
        for mode in args.modes:
            out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows),
                                  "--child", model, mode, tmp],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {rows[-1]}", flush=True)
            for leftover in Path(tmp).glob("fake*"):
                leftover.unlink()
    print("\n| mode | rows | rows/s | seconds | RSS after warm-up (MB) | peak RSS (MB) | "
          "file (MB) | load average after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        file_mb = f"{r['file_mb']:.0f}" if "file_mb" in r else ""
        print(f"| {r['mode']} | {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['seconds']:.1f} | "
              f"{r['baseline_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {file_mb} | "
              f"{r['load_average']:.1f} |")


if __name__ == "__main__":
    main()

"""Fitting tables larger than memory: peak memory and time per epoch as the rows grow.

Usage (from the repository root)::

    python benchmarks/streaming.py                          # 100,000 and 1,000,000 rows
    python benchmarks/streaming.py --rows 10000000 --data-dir /big/disk

For each size N, writes N rows of Adult's shape to a Parquet file in chunks of 100,000
(the bundled demo rows resampled, their integer columns jittered within the public domain:
never N rows in memory), then fits ``DPFlowSynthesizer(epsilon=1, epochs=1)`` on the path
(delta ``min(1e-5, 0.1 / N)``) with the declared domain (``load_demo_domain()``) in a
process of its own, niced, with one torch thread. That process samples its memory every 0.1 s from ``/proc/self/status``
(``VmRSS``, its anonymous and file-backed parts, and the kernel's high-water mark
``VmHWM``) and reports the peak of each, the resident memory before the fit (imports), the
fit's time, the time of the passes over the data (everything before DP-SGD), and the time
per epoch of DP-SGD. The cells file goes to ``--data-dir`` (``TMPDIR``) too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

GENERATE_CHUNK = 100_000


def generate(path: Path, n_rows: int, seed: int = 0) -> None:
    """N rows of Adult's shape, written chunk by chunk (bounded memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skdpflow import load_demo, load_demo_domain

    demo, domain = load_demo(), load_demo_domain()
    rng = np.random.default_rng(seed)
    jitter = {"age": 2, "hours-per-week": 2, "education-num": 0, "fnlwgt": 5000}
    writer = None
    try:
        for start in range(0, n_rows, GENERATE_CHUNK):
            size = min(GENERATE_CHUNK, n_rows - start)
            chunk = demo.iloc[rng.integers(0, len(demo), size)].reset_index(drop=True)
            for name, width in jitter.items():
                if width:
                    lo, hi = domain[name].numeric_bounds()
                    chunk[name] = np.clip(chunk[name] + rng.integers(-width, width + 1, size),
                                          lo, hi).astype(np.int64)
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


class MemorySampler(threading.Thread):
    """Peaks of VmRSS, RssAnon, RssFile and the kernel's VmHWM, sampled every 0.1 s."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {f: 0.0 for f in self.FIELDS}
        self.running = True

    @staticmethod
    def read() -> dict[str, float]:
        out = {}
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in MemorySampler.FIELDS:
                    out[key] = int(value.split()[0]) / 1024  # kB to MiB
        return out

    def run(self) -> None:
        while self.running:
            for key, value in self.read().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(0.1)


def fit_child(path: str, n_rows: int, epochs: float) -> dict[str, Any]:
    os.nice(10)
    import torch

    torch.set_num_threads(1)
    from skdpflow import DPFlowSynthesizer, load_demo_domain, synthesizer

    timings: dict[str, float] = {}
    real_train = synthesizer.train_flow

    def timed_train(*args: Any, **kwargs: Any) -> Any:
        timings["train_start"] = time.perf_counter()
        try:
            return real_train(*args, **kwargs)
        finally:
            timings["train_s"] = time.perf_counter() - timings["train_start"]

    synthesizer.train_flow = timed_train
    baseline = MemorySampler.read()
    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    delta = min(1e-5, 0.1 / n_rows)  # below 1 / n
    synth = DPFlowSynthesizer(epsilon=1.0, delta=delta, epochs=epochs, random_state=0,
                              verbose=False, n_jobs=1)
    synth.fit(path, domain=load_demo_domain())
    fit_s = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    peak = {k: max(v, MemorySampler.read()[k]) for k, v in sampler.peak.items()}
    epochs_done = synth.steps_ * synth.sample_rate_
    return {
        "rows": n_rows, "fit_s": round(fit_s, 1),
        "passes_s": round(timings["train_start"] - start, 1),
        "train_s": round(timings["train_s"], 1),
        "steps": synth.steps_, "batch": round(synth.sample_rate_ * synth.n_rows_estimate_),
        "epochs": round(epochs_done, 3),
        "s_per_epoch": round(timings["train_s"] / epochs_done, 1),
        "dims": synth.encoder_.n_dims, "epsilon": round(synth.epsilon_, 4), "delta": delta,
        "baseline_rss_mib": round(baseline["VmRSS"]),
        **{f"peak_{k}_mib": round(v) for k, v in peak.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--data-dir", default=None,
                        help="where the Parquet files and the cells go (default: TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--fit-child", nargs=2, metavar=("PATH", "ROWS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_child:
        print(json.dumps(fit_child(args.fit_child[0], int(args.fit_child[1]), args.epochs)))
        return
    folder = Path(tempfile.mkdtemp(prefix="skdpflow-bench-", dir=args.data_dir))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(folder)}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    try:
        for n in args.rows:
            path = folder / f"adult_{n}.parquet"
            start = time.perf_counter()
            generate(path, n)
            made = time.perf_counter() - start
            out = subprocess.run(
                [sys.executable, __file__, "--fit-child", str(path), str(n),
                 "--epochs", str(args.epochs)],
                env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(out.returncode)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["generate_s"] = round(made, 1)
            result["parquet_mib"] = round(path.stat().st_size / 2**20)
            print(json.dumps(result), flush=True)
            if not args.keep:
                path.unlink()
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

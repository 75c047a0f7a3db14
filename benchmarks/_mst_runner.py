"""smartnoise-synth MST on a declared public domain: fit on a CSV, write samples as a CSV.

Runs in the benchmark's own environment (smartnoise-synth is not a skdpflow dependency),
which ``benchmarks/suite.py`` and ``benchmarks/curves.py`` call through a subprocess::

    python -m venv /work/venv-mst
    /work/venv-mst/bin/pip install torch==2.13.0      # first: the small CPU build
    /work/venv-mst/bin/pip install smartnoise-synth==1.0.8
    /work/venv-mst/bin/python benchmarks/_mst_runner.py train.csv domain.json samples.csv \\
        --epsilon 1 --delta 1e-5 --rows 1000 --seed 0

``domain.json`` is a skdpflow domain in its dict form (``Domain.to_dict()``), read here
without importing skdpflow. Each column is discretised on PUBLIC facts only:

- numerical: 32 equal-width bins over the declared [min, max] (an integer column with at
  most 32 values in its bounds: one bin per integer); values beyond the bounds are clipped
  into the edge bins;
- categorical / boolean: one code per declared category;
- a nullable column gets one more code for a missing value.

MST (McKenna et al., 2021, "Winning the NIST Contest", arXiv:2108.04978) is then fitted on
those codes with that cardinality (the domain declared, not read from the rows), at
(epsilon, delta); sampled bins are decoded uniformly inside the bin (integers: a uniform
integer of the bin), categories back to their declared values. The seed drives sampling and
decoding only; MST's noise comes from OpenDP's own generator.

The discretisation functions use numpy and pandas alone, so skdpflow's tests import them
without smartnoise.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
import pandas as pd

BINS = 32
MISSING_CODE = "missing"


def column_codes(spec: dict[str, Any]) -> dict[str, Any]:
    """How one declared column is discretised: its kind, cardinality and bin edges."""
    kind, nullable = spec["type"], bool(spec.get("nullable", False))
    if kind == "boolean":
        cats = [False, True]
    elif kind == "categorical":
        cats = list(spec["categories"])
    elif kind == "numerical":
        lo, hi = float(spec["min"]), float(spec["max"])
        if spec.get("integer") and math.floor(hi) - math.ceil(lo) + 1 <= BINS:
            lo, hi = math.ceil(lo), math.floor(hi)
            edges = np.arange(lo, hi + 2, dtype=float) - 0.5  # one bin per integer
        else:
            edges = np.linspace(lo, hi if hi > lo else lo + 1, BINS + 1)
        return {"kind": "numerical", "edges": edges, "integer": bool(spec.get("integer")),
                "lo": lo, "hi": hi, "size": len(edges) - 1 + nullable, "nullable": nullable}
    else:
        raise ValueError(f"MST runner: column type {kind!r} is not supported")
    return {"kind": "categorical", "categories": cats, "size": len(cats) + nullable,
            "nullable": nullable}


def encode(df: pd.DataFrame, domain: dict[str, dict]) -> tuple[pd.DataFrame, list[int]]:
    """Integer codes of every column on its public bins/categories, and the cardinalities."""
    out, sizes = {}, []
    for name, spec in domain.items():
        info = column_codes(spec)
        col = df[name]
        missing = col.isna().to_numpy()
        if info["kind"] == "numerical":
            edges = info["edges"]
            x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
            codes = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        else:
            lookup = {str(c): i for i, c in enumerate(info["categories"])}
            text = col.astype(str)
            unknown = ~(text.isin(list(lookup)) | col.isna())
            if unknown.any():
                raise ValueError(f"column {name!r} holds values outside its declared categories")
            codes = text.map(lookup).fillna(0).to_numpy(dtype=int)
        if info["nullable"]:
            codes = np.where(missing, info["size"] - 1, codes)
        elif missing.any():
            raise ValueError(f"column {name!r} has missing values but is not nullable")
        out[name] = codes.astype(int)
        sizes.append(int(info["size"]))
    return pd.DataFrame(out, index=df.index), sizes


def decode(codes: pd.DataFrame, domain: dict[str, dict], rng: np.random.Generator
           ) -> pd.DataFrame:
    """Values from codes: uniform inside a numerical bin, declared categories otherwise."""
    out = {}
    for name, spec in domain.items():
        info = column_codes(spec)
        c = codes[name].to_numpy(dtype=int)
        missing = (c == info["size"] - 1) if info["nullable"] else np.zeros(len(c), bool)
        if info["kind"] == "numerical":
            edges = info["edges"]
            k = np.clip(c, 0, len(edges) - 2)
            x = rng.uniform(edges[k], edges[k + 1])
            if info["integer"]:
                # a uniform integer of the bin [a, b): ceil(a) .. ceil(b) - 1, within bounds
                a, b = np.ceil(edges[k]), np.maximum(np.ceil(edges[k + 1]), np.ceil(edges[k]) + 1)
                x = np.clip(rng.integers(a.astype(np.int64), b.astype(np.int64)),
                            math.ceil(info["lo"]), math.floor(info["hi"])).astype(float)
            x[missing] = np.nan
            series = pd.Series(x)
            if info["integer"] and not missing.any():
                series = series.astype(np.int64)
            elif info["integer"]:
                series = series.astype("Int64")
            out[name] = series
        else:
            cats = np.array(info["categories"] + [None], dtype=object)
            out[name] = pd.Series(cats[np.where(missing, len(info["categories"]),
                                                np.clip(c, 0, len(info["categories"]) - 1))],
                                  dtype=object)
    return pd.DataFrame(out)


def read_table(path: str, domain: dict[str, dict]) -> pd.DataFrame:
    """The CSV with categorical columns as text, an empty field as missing."""
    text = [n for n, s in domain.items() if s["type"] in ("categorical", "boolean")]
    return pd.read_csv(path, dtype={n: str for n in text}, keep_default_na=False,
                       na_values=[""])[list(domain)]


def fit_sample(df: pd.DataFrame, domain: dict[str, dict], epsilon: float, delta: float,
               rows: int, seed: int) -> pd.DataFrame:
    """Fit MST on the public discretisation of ``df``; ``rows`` decoded samples."""
    from mbi import Dataset, Domain
    from snsynth.mst import MSTSynthesizer

    codes, sizes = encode(df, domain)
    names = [f"col{i}" for i in range(len(sizes))]
    data = Dataset(pd.DataFrame(codes.to_numpy(), columns=names), domain=Domain(names, sizes))
    np.random.seed(seed)  # sampling and compression decoding in mbi/snsynth
    mst = MSTSynthesizer(epsilon=float(epsilon), delta=delta)
    mst.MST(data, mst.epsilon, delta)
    sampled = mst.undo_compress_fn(mst.synthesizer.synthetic_data(rows=rows)).df
    sampled.columns = list(domain)
    return decode(sampled, domain, np.random.default_rng(seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train")
    parser.add_argument("domain")
    parser.add_argument("output")
    parser.add_argument("--epsilon", type=float, required=True)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.domain) as handle:
        domain = json.load(handle)
    df = read_table(args.train, domain)
    start = time.perf_counter()
    fake = fit_sample(df, domain, args.epsilon, args.delta, args.rows, args.seed)
    fake.to_csv(args.output, index=False)
    print(json.dumps({"fit_sample_s": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()

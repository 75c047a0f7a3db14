"""Adult: how often the samples keep the demo's declared rules, and the worst column pairs.

Usage (from the repository root)::

    python benchmarks/consistency.py                    # epsilon 1, seed 0
    python benchmarks/consistency.py --epsilon 1 --seeds 0 1 2

Fits the full Adult train split (``../shared/data``, as ``benchmarks/adult.py`` does) with
the declared domain, samples as many rows, and evaluates them with
``skdpflow.load_demo_rules()`` (``education-num`` = f(``education``), a husband is male, a
husband is married): the share of real and synthetic rows keeping each rule, and the five
pairs of lowest contingency similarity (synthetic, and the real train rows vs the test split).
For an implication it also gives the share of the rows meeting its condition that break it
(``broken_if_*``: female husbands among husbands). Prints markdown tables per seed (and the
mean of the consistency tables); the figures are issue 12's "before" (no rule is enforced).
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd
from adult import TARGET, load


def run(epsilon: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, float]:
    """The consistency table (with, for an implication, the share of the rows meeting its
    condition that break it: ``broken_if_real`` / ``broken_if_synthetic``), the worst pairs,
    the scores and the fit time."""
    import torch

    from skdpflow import DPFlowSynthesizer, evaluate, load_demo_domain, load_demo_rules

    torch.set_num_threads(int(os.environ.get("SKDPFLOW_THREADS", "1")))
    train, test = load()
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=1e-5, random_state=seed, verbose=False)
    start = time.perf_counter()
    synth.fit(train, domain=load_demo_domain())
    fit_s = time.perf_counter() - start
    fake = synth.sample(len(train), random_state=seed)
    rules = load_demo_rules()
    result = evaluate(train, fake, test=test, target=TARGET, domain=load_demo_domain(),
                      rules=rules)
    table = result.consistency.copy()
    for name, frame in (("real", train), ("synthetic", fake)):
        table[f"broken_if_{name}"] = [broken_if(rule, frame) for rule in rules]
    return table, result.worst_pairs, result.to_frame(), fit_s


def broken_if(rule: object, frame: pd.DataFrame) -> float:
    """For an implication, the share of the rows meeting its condition that break it (the
    issue's "female husbands"); NaN for other rules."""
    from skdpflow import Implication

    if not isinstance(rule, Implication):
        return float("nan")
    when = frame[rule.if_column].isin(rule.if_values).to_numpy()
    return float((~rule.satisfied(frame))[when].mean()) if when.any() else float("nan")


def markdown(frame: pd.DataFrame, index: str) -> str:
    lines = [f"| {index} | " + " | ".join(frame.columns) + " |",
             "|---|" + "---|" * len(frame.columns)]
    for name, row in frame.iterrows():
        cells = ["" if pd.isna(v) else f"{v:.3f}" for v in row]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    tables = []
    for seed in args.seeds:
        consistency, worst, scores, fit_s = run(args.epsilon, seed)
        tables.append(consistency)
        main_scores = scores.loc[["tvd_1way", "tvd_2way", "quality", "auroc_hgb"],
                                 ["synthetic", "real_data"]]
        print(f"\nepsilon {args.epsilon:g}, seed {seed} (fit {fit_s:.0f} s)\n")
        print(markdown(consistency, "rule") + "\n")
        print(markdown(worst, "pair (contingency similarity)") + "\n")
        print(markdown(main_scores, "metric"), flush=True)
    if len(tables) > 1:
        mean = sum(tables) / len(tables)
        print(f"\nmean of {len(tables)} seeds\n\n" + markdown(mean, "rule"))


if __name__ == "__main__":
    main()

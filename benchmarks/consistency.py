"""Adult: how often the samples keep the demo's declared rules, and the worst column pairs.

Usage (from the repository root)::

    python benchmarks/consistency.py                    # epsilon 1, seed 0
    python benchmarks/consistency.py --epsilon 1 --seeds 0 1 2
    python benchmarks/consistency.py --declare --seeds 0 1 2   # the rules declared, enforced

Fits the full Adult train split (``../shared/data``, as ``benchmarks/adult.py`` does) with
the declared domain, samples as many rows, and evaluates them with
``skdpflow.load_demo_rules()`` (``education-num`` = f(``education``), a husband is male, a
husband is married): the share of real and synthetic rows keeping each rule, and the five
pairs of lowest contingency similarity (synthetic, and the real train rows vs the test split).
For an implication it also gives the share of the rows meeting its condition that break it
(``broken_if_*``: female husbands among husbands). Prints markdown tables per seed (and the
mean of the consistency tables); the figures are issue 12's "before" (no rule is enforced).

With ``--declare`` the rules are declared in the domain (``Domain(..., constraints=rules)``)
and one fitted model gives two paired samples from the same seed: the rows as sampled (every
rule enforced by the per-row repair) and the same latent rows decoded without the repair
(the model's own rows; the repair is post-processing, so this is the same model). It prints,
per seed and as the mean, the share of rows keeping each rule and the main scores for both
(``without`` / ``enforced``), and checks that repairing the unrepaired rows gives exactly the
sampled ones.
"""

from __future__ import annotations

import argparse
import ast
import os
import time

import pandas as pd
from adult import TARGET, load


def run(epsilon: float, seed: int, discrete_model: str = "heads", **params: object
        ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, float]:
    """The consistency table (with, for an implication, the share of the rows meeting its
    condition that break it: ``broken_if_real`` / ``broken_if_synthetic``), the worst pairs,
    the scores and the fit time."""
    import torch

    from skdpflow import DPFlowSynthesizer, evaluate, load_demo_domain, load_demo_rules

    torch.set_num_threads(int(os.environ.get("SKDPFLOW_THREADS", "1")))
    train, test = load()
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=1e-5, random_state=seed, verbose=False,
                              discrete_model=discrete_model, **params)
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


def run_declared(epsilon: float, seed: int, discrete_model: str = "heads"
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, float]:
    """One fit with the rules declared; the consistency and the main scores of its rows
    without and with the repair (paired: the same latent rows), the 1-way TVD of the
    columns the repair changed, the five worst pairs of each, and the fit time."""
    import torch

    from skdpflow import Domain, DPFlowSynthesizer, evaluate, load_demo_domain, load_demo_rules
    from skdpflow.enforcement import Enforcer, released_mass
    from skdpflow.metrics import column_kinds, contingency_similarity, marginal_tvd

    torch.set_num_threads(int(os.environ.get("SKDPFLOW_THREADS", "1")))
    train, test = load()
    rules = load_demo_rules()
    domain = Domain(load_demo_domain().columns, constraints=rules)
    synth = DPFlowSynthesizer(epsilon=epsilon, delta=1e-5, random_state=seed, verbose=False,
                              discrete_model=discrete_model)
    start = time.perf_counter()
    synth.fit(train, domain=domain)
    fit_s = time.perf_counter() - start
    enforced = synth.sample(len(train), random_state=seed)
    declared, synth.domain_.constraints = synth.domain_.constraints, []
    try:  # the same model and seed without the repair: the model's own rows
        without = synth.sample(len(train), random_state=seed)
    finally:
        synth.domain_.constraints = declared
    repaired = Enforcer(synth.domain_, mass=released_mass(synth.marginals_, synth.domain_))(
        without)
    assert repaired.equals(enforced), "the repair is not what sample applies"
    changed = float((without != enforced).any(axis=1).mean())
    consistency, scores, columns, worst = {}, {}, {}, {}
    kinds = column_kinds(train, load_demo_domain())
    for name, fake in (("without", without), ("enforced", enforced)):
        columns[name] = {k[0]: v for k, v in marginal_tvd(train, fake, 1, kinds=kinds).items()}
        pairs = contingency_similarity(train, fake, kinds=kinds).head(5)
        worst[name] = [f"{p} {v:.3f}" for p, v in pairs.items()]
        result = evaluate(train, fake, test=test, target=TARGET, domain=load_demo_domain(),
                          rules=rules)
        consistency[name] = result.consistency["synthetic"]
        consistency[f"broken_if_{name}"] = [broken_if(rule, fake) for rule in rules]
        frame = result.to_frame()
        scores[name] = frame.loc[["tvd_1way", "tvd_2way", "quality", "auroc_hgb"],
                                 "synthetic"]
    scores = pd.DataFrame(scores)
    scores.loc["rows_changed_by_repair"] = [0.0, changed]
    columns = pd.DataFrame(columns)
    columns = columns[(columns["without"] - columns["enforced"]).abs() > 1e-4]
    return (pd.DataFrame(consistency, index=result.consistency.index), scores,
            columns.rename_axis("1-way TVD"), pd.DataFrame(worst), fit_s)


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
    parser.add_argument("--declare", action="store_true",
                        help="declare the rules (enforced) and compare paired samples")
    parser.add_argument("--discrete-model", default="heads", choices=["heads", "dequantized"])
    parser.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE",
                        help="other DPFlowSynthesizer parameters (values read as Python)")
    args = parser.parse_args()
    params = {k: ast.literal_eval(v) for k, v in (p.split("=", 1) for p in args.param)}
    if args.declare:
        tables, all_scores = [], []
        for seed in args.seeds:
            consistency, scores, columns, worst, fit_s = run_declared(args.epsilon, seed,
                                                                     args.discrete_model)
            tables.append(consistency)
            all_scores.append(scores)
            print(f"\nepsilon {args.epsilon:g}, seed {seed}, rules declared (fit {fit_s:.0f} "
                  "s)\n")
            print(markdown(consistency, "rule") + "\n")
            print(markdown(scores, "metric") + "\n")
            print(markdown(columns, "column the repair changed (1-way TVD)") + "\n")
            print("| worst pairs, without | worst pairs, enforced |\n|---|---|\n" + "\n".join(
                f"| {a} | {b} |" for a, b in zip(worst["without"], worst["enforced"])),
                flush=True)
        if len(tables) > 1:
            print(f"\nmean of {len(tables)} seeds\n\n"
                  + markdown(sum(tables) / len(tables), "rule") + "\n\n"
                  + markdown(sum(all_scores) / len(all_scores), "metric"))
        return
    tables = []
    for seed in args.seeds:
        consistency, worst, scores, fit_s = run(args.epsilon, seed, args.discrete_model,
                                                **params)
        tables.append(consistency)
        main_scores = scores.loc[["tvd_1way", "tvd_2way", "quality", "auroc_hgb"],
                                 ["synthetic", "real_data"]]
        print(f"\nepsilon {args.epsilon:g}, seed {seed}, {args.discrete_model} (fit "
              f"{fit_s:.0f} s)\n")
        print(markdown(consistency, "rule") + "\n")
        print(markdown(worst, "pair (contingency similarity)") + "\n")
        print(markdown(main_scores, "metric"), flush=True)
    if len(tables) > 1:
        mean = sum(tables) / len(tables)
        print(f"\nmean of {len(tables)} seeds\n\n" + markdown(mean, "rule"))


if __name__ == "__main__":
    main()

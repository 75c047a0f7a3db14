"""Paired A/B of the copula-only model's post-processing (research only, NOT private).

``benchmarks/suite.py`` with the fit's secret noise replaced by a *seeded, insecure*
``SeededNoise`` keyed by the suite's seed, so that two variants of the post-processing see
the same noisy releases seed by seed and their difference is measured on paired runs
(the noise's own spread, which dominates a run's AUROC, cancels). Never a way to fit a
model: anyone who knows the seed removes the noise.

Variants, from the environment:

- ``MIN_EIGENVALUE``: the floor on the correlation matrix's eigenvalues before it is
  rescaled to unit diagonal (``skdpflow.privacy.copula.MIN_EIGENVALUE``);
- ``ROW_BOUND_FACTOR``: the copula-only row bound ``B`` as a multiple of the cell means'
  expected squared norm (``skdpflow.privacy.copula.ROW_BOUND_FACTOR``);
- the budget split, through the suite's ``--params`` (explicit ``marginals_fraction`` and
  ``copula_fraction``, scaled up together when DP-SGD is skipped);
- ``BIN_NOISE_STDS``, ``UNIT_BIN_FACTOR`` and ``MIN_HISTOGRAM_BINS``: the histograms' bins rule
  (``skdpflow.schedule.histogram_bins``; where the code has it).

Run against an older tree (the "before" side) with ``PYTHONPATH`` pointing at a ``git
archive`` of it (its ``skdpflow`` and ``benchmarks``) and ``SKDPFLOW_DATA`` at the data.
``paired_cells.py`` prints the paired differences of two outputs, cell by cell.

Run at ``f886576`` (docs/benchmarks.md, "Paired A/B of the copula-only model"); the
outputs are in ``copula_paired_runs/``, one file per variant.

Run from the repository root, e.g.::

    MIN_EIGENVALUE=0.001 SKDPFLOW_THREADS=1 OMP_NUM_THREADS=1 python \\
        benchmarks/results/copula_paired_variant.py --methods skdpflow \\
        --datasets bank_marketing --sizes 1000 --epsilons 1 --seeds 100 ... 139 \\
        --out /tmp/eig0001
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import skdpflow.privacy.copula as C
import skdpflow.synthesizer as S
from skdpflow.privacy.randomness import SeededNoise

C.MIN_EIGENVALUE = float(os.environ.get("MIN_EIGENVALUE", C.MIN_EIGENVALUE))
C.ROW_BOUND_FACTOR = float(os.environ.get("ROW_BOUND_FACTOR", C.ROW_BOUND_FACTOR))
import skdpflow.schedule as _schedule

for _name in ("BIN_NOISE_STDS", "UNIT_BIN_FACTOR", "MIN_HISTOGRAM_BINS"):
    if _name in os.environ:
        setattr(_schedule, _name, float(os.environ[_name]))
print("min eigenvalue:", C.MIN_EIGENVALUE, "row bound factor:", C.ROW_BOUND_FACTOR,
      flush=True)
import suite

_seed = [0]
_fit = suite.fit_skdpflow


def fit_skdpflow(train, domain, epsilon, seed, params):
    _seed[0] = seed
    return _fit(train, domain, epsilon, seed, params)


suite.fit_skdpflow = fit_skdpflow
S.SecureNoise = lambda: SeededNoise(1_000_003 * _seed[0] + 17)  # insecure: research only
suite.main()

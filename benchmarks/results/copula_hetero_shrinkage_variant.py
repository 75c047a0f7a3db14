"""The A/B of the copula-only shrinkage (docs/benchmarks.md, "A sharper copula, tried and
reverted"; raw output in copula_hetero_shrinkage.txt and copula_hetero_shrinkage_runs/).

``benchmarks/suite.py`` with ``COPULA_SHRINKAGE=covariance``: the estimate before commit
c6dbe05 (each pair's covariance shrunk under one NPMLE prior with a common noise std, then
multiplied by its factor) patched in; without it, the default (each pair in correlation
units with its own noise std, the prior on [-1, 1]). Run from the repository root:

    COPULA_SHRINKAGE=covariance SKDPFLOW_THREADS=1 OMP_NUM_THREADS=1 python \\
        benchmarks/results/copula_hetero_shrinkage_variant.py --methods skdpflow \\
        --datasets bank_marketing default_credit_card kddcup99_10pct --sizes 1000 \\
        --epsilons 1 --seeds 20 ... 49 --out /tmp/before
    # and the same without COPULA_SHRINKAGE, --out /tmp/after
"""
import inspect
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import skdpflow.privacy.copula as C  # noqa: E402

if os.environ.get("COPULA_SHRINKAGE") == "covariance":
    src = inspect.getsource(C.shrunk_correlation)
    new = "rho = posterior_means(cov * factor, tau * factor, span=(-1.0, 1.0))"
    assert new in src
    src = src.replace(new, "rho = posterior_means(cov, tau) * factor")
    namespace = dict(vars(C))
    exec(src, namespace)
    C.shrunk_correlation = namespace["shrunk_correlation"]
print("copula shrinkage:", os.environ.get("COPULA_SHRINKAGE", "default"), flush=True)
import suite  # noqa: E402

suite.main()

"""The copula-only row bound on a two-column table (docs/benchmarks.md, "Paired A/B of the
copula-only model"): tests/test_copula.py's pair (a binary column tied to a numerical one,
latent correlation 0.9, 2,000 rows, epsilon 0.3, DP-SGD skipped), the privacy noise seeded
(research only) with seeds 0-11, ``ROW_BOUND_FACTOR`` 1 then 0.7: the share of the real
correlation the samples keep. Run from the repository root:

    python benchmarks/results/copula_two_column_bound.py
"""
import sys, numpy as np, warnings
sys.path.insert(0, "tests")
import test_copula as T
import skdpflow.privacy.copula as C
import skdpflow.synthesizer as S
from skdpflow.privacy.randomness import SeededNoise
class MP:
    def setattr(self, obj, name, val): setattr(obj, name, val)
for f in (1.0, 0.7):
    C.ROW_BOUND_FACTOR = f
    r = []
    for seed in range(12):
        m, frame = T._binary_pair_fit(0.3, seed, MP())
        real = np.corrcoef(frame["a"], frame["b"] == "yes")[0, 1]
        fake = m.sample(5000, random_state=1)
        r.append(np.corrcoef(fake["a"], fake["b"] == "yes")[0, 1] / real)
    print(f, "kept share of the link: mean %.3f sd %.3f" % (np.mean(r), np.std(r)), np.round(r, 2))

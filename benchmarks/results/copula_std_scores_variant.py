"""The standardised cell means of docs/benchmarks.md, "The copula-only row bound" (std10 in
copula_row_bound.txt): each score m_i / sqrt(a_i), clipped at 3, row bound STD_BOUND * D.
Run from the repository root like copula_row_bound_variant.py, with STD_BOUND=1.
"""
import os
import sys
from pathlib import Path

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import skdpflow.privacy.copula as C
import skdpflow.synthesizer as S
STATE = {}
KAPPA = float(os.environ.get("STD_BOUND", "1.0"))
orig_rel = S.cell_reliability
def rel(*a, **k):
    out = orig_rel(*a, **k); STATE["a"] = out; return out
S.cell_reliability = rel
S.row_bound = lambda a: KAPPA * len(a)
orig_clip = C.clipped_scores
def clipped_scores(lo, hi, means=False, bound=None):
    if not means:
        return orig_clip(lo, hi, means, bound)
    z = np.clip(C.cell_means(lo, hi) / np.sqrt(STATE["a"]), -C.CLIP, C.CLIP)
    bound = z.shape[1] if bound is None else bound
    norm2 = np.square(z).sum(axis=1)
    return z * np.sqrt(np.minimum(1.0, bound / np.maximum(norm2, 1e-300)))[:, None]
C.clipped_scores = clipped_scores
print("standardized scores, bound factor", KAPPA, flush=True)
import suite
suite.main()

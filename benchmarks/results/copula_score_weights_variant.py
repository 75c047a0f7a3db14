"""Copula-only scores weighted per dimension (a lead for the next session, docs/benchmarks.md,
"The copula-only row bound"): each cell mean scaled by ``a_i ** -POWER`` (0: today's cell
means; 0.5: the standardised ones), clipped at 3, the row bound their expected squared norm
``sum_i a_i ** (1 - 2 POWER)``. Run from the repository root like
copula_row_bound_variant.py, with POWER=0.25.
"""
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import skdpflow.privacy.copula as C
import skdpflow.synthesizer as S

POWER = float(os.environ.get("POWER", "0.25"))
STATE = {}
_reliability = S.cell_reliability


def cell_reliability(*args, **kwargs):
    out = _reliability(*args, **kwargs)
    STATE["a"] = out
    return out


def clipped_scores(lo, hi, means=False, bound=None):
    if not means:
        return _clipped(lo, hi, means, bound)
    z = np.clip(C.cell_means(lo, hi) * STATE["a"] ** -POWER, -C.CLIP, C.CLIP)
    bound = z.shape[1] if bound is None else bound
    norm2 = np.square(z).sum(axis=1)
    return z * np.sqrt(np.minimum(1.0, bound / np.maximum(norm2, 1e-300)))[:, None]


_clipped = C.clipped_scores
S.cell_reliability = cell_reliability
S.row_bound = lambda a: float(min(np.sum(a ** (1 - 2 * POWER)), len(a)))
C.clipped_scores = clipped_scores
print("score weights a ** -", POWER, flush=True)
import suite

suite.main()

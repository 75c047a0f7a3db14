# Measurement (2026-12-03), not a default: category weights on a default Adult fit (epsilon 1),
# raked on half of the post-processing pool and checked on the other half: acceptance and the
# worst 1-way gap for cap quantiles 0.999-0.8, with the current raking (cap after) and with
# raking under the cap (capped_rake). Output in capped_raking_adult.txt.
import sys, time, torch, numpy as np
import skdpflow.raking as R
from skdpflow import DPFlowSynthesizer, load_demo, load_demo_domain
torch.set_num_threads(1)
s = DPFlowSynthesizer(epsilon=1.0, random_state=0, verbose=False, n_jobs=1)
captured = {}
orig = R.CategoryWeights.fit.__func__
def fit(cls, z, dims, edges):
    captured['args'] = (z.copy(), list(dims), [np.asarray(e) for e in edges])
    return orig(cls, z, dims, edges)
R.CategoryWeights.fit = classmethod(fit)
import skdpflow.synthesizer as S
S.CategoryWeights.fit = R.CategoryWeights.fit
t = time.time(); s.fit(load_demo(), domain=load_demo_domain()); print('fit', round(time.time()-t, 1))
z, dims, edges = captured['args']
held = np.random.default_rng(5).permutation(len(z))
fitpool, test = z[held[: len(z)//2]], z[held[len(z)//2:]]
for q in (0.999, 0.99, 0.95, 0.9):
    R.CAP_QUANTILE = q
    w = orig(R.CategoryWeights, fitpool, dims, edges)
    # weighted margins of held-out rows under min(w, W)
    logw = sum(f[R._cells(test[:, d], e)] for d, e, f in zip(w.dims, w.edges, w.log_factors))
    ww = np.exp(np.minimum(logw, w.log_cap))
    worst = 0
    for d, e in zip(w.dims, w.edges):
        c = R._cells(test[:, d], e)
        share = np.bincount(c, weights=ww, minlength=len(e) - 1) / ww.sum()
        worst = max(worst, 0.5 * np.abs(share - np.diff(e)).sum())
    print('cap quantile', q, 'acceptance', round(w.acceptance, 3), 'worst held-out 1-way gap', round(worst, 4), flush=True)

def capped_rake(z, dims, edges, q, iters=100):
    w0 = orig(R.CategoryWeights, z, dims, edges)
    codes = [R._cells(z[:, d], e) for d, e in zip(dims, edges)]
    targets = [np.diff(e) for e in edges]
    lf = [f.copy() for f in w0.log_factors]
    bound = np.log(R.MAX_FACTOR)
    for _ in range(iters):
        logw = sum(f[c] for c, f in zip(codes, lf))
        cap = np.quantile(logw, q)
        for j, (c, t) in enumerate(zip(codes, targets)):
            logw = sum(f[c2] for c2, f in zip(codes, lf))
            ww = np.exp(np.minimum(logw, cap))
            share = np.bincount(c, weights=ww, minlength=len(t)) / ww.sum()
            ok = (share > 0) & (t > 0)
            step = np.zeros(len(t)); step[ok] = np.log(t[ok]) - np.log(share[ok])
            lf[j] = np.clip(lf[j] + step, -bound, bound)
    logw = sum(f[c] for c, f in zip(codes, lf))
    cap = float(np.quantile(logw, q))
    norm = float(np.log(np.mean(np.exp(np.minimum(logw, cap)))))
    return R.CategoryWeights(list(dims), [np.asarray(e, float) for e in edges], lf, cap, norm)

for q in (0.99, 0.95, 0.9, 0.8):
    w = capped_rake(fitpool, dims, edges, q)
    logw = sum(f[R._cells(test[:, d], e)] for d, e, f in zip(w.dims, w.edges, w.log_factors))
    ww = np.exp(np.minimum(logw, w.log_cap))
    worst = 0
    for d, e in zip(w.dims, w.edges):
        c = R._cells(test[:, d], e)
        share = np.bincount(c, weights=ww, minlength=len(e) - 1) / ww.sum()
        worst = max(worst, 0.5 * np.abs(share - np.diff(e)).sum())
    print('capped raking, quantile', q, 'acceptance', round(w.acceptance, 3), 'worst held-out 1-way gap', round(worst, 4), flush=True)

import sys, json, numpy as np, torch
sys.path.insert(0, '/work/main/benchmarks')
import suite
from skdpflow import evaluate
torch.set_num_threads(1)
train, test, target = suite.load('bank_marketing', 3000, 2000)
domain = suite.public_domain('bank_marketing')
for seed in range(6):
    s = suite.fitted_skdpflow(train, domain, 1.0, 0, {"n_jobs": 1})
    L = s.flow_.base_cholesky.double()
    hs = s.flow_.head_scale.double()
    fake = s.sample(3000, random_state=0)
    sc = evaluate(train, fake, test=test, target=target, domain=domain).to_frame()
    print(seed, 'min head_scale', round(float(hs.min()), 3), 'mac', round(s.copula_info_['mean_abs_correlation'], 3), 'shrink', round(s.copula_info_['shrinkage'], 3),
          'acc', round(s.category_weights_.acceptance, 3) if s.category_weights_ else None,
          {m: round(float(sc.loc[m, 'synthetic']), 3) for m in ['tvd_1way', 'tvd_2way', 'quality', 'auroc_hgb']}, flush=True)

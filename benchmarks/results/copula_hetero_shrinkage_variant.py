"""suite.py with the copula-only shrinkage in correlation units, heteroscedastic (experiment).

HETERO=1: each pair's corrected correlation y = cov * factor has noise std tau * factor; the
NPMLE prior lives on [-1, 1] (a correlation's range), EM with each pair's own std; the
posterior means replace posterior_means(cov, tau) * factor."""
import inspect, math, os, sys
import numpy as np
sys.path.insert(0, "/work/main/benchmarks")
import skdpflow.privacy.copula as C

def posterior_means_hetero(y, s):
    low, high = -1.0, 1.0
    points = int(min(max(C.PRIOR_GRID, math.ceil(2.0 / (float(s.min()) / 2.0)) + 1),
                     C.PRIOR_GRID_MAX))
    grid = np.linspace(low, high, points)
    log_lik = -0.5 * np.square((y[:, None] - grid[None, :]) / s[:, None])
    lik = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))
    weights = np.full(points, 1.0 / points)
    for _ in range(C.PRIOR_EM_STEPS):
        post = lik * weights
        post /= post.sum(axis=1, keepdims=True)
        weights = post.mean(axis=0)
    post = lik * weights
    post /= post.sum(axis=1, keepdims=True)
    return post @ grid

if os.environ.get("HETERO") == "1":
    src = inspect.getsource(C.shrunk_correlation)
    old = "rho = posterior_means(cov, tau) * factor"
    assert old in src
    src = src.replace(old, "rho = posterior_means_hetero(cov * factor, tau * factor)")
    ns = dict(vars(C)); ns["posterior_means_hetero"] = posterior_means_hetero
    exec(src, ns)
    C.shrunk_correlation = ns["shrunk_correlation"]
print("variant HETERO", os.environ.get("HETERO"), flush=True)
import suite
suite.main()

# One-off A/B record (2026-12-02): the heads sampling path before and after commit fc37ca1,
# interleaved in one process on one fitted model (monkeypatching the two old functions back).
# Run from the repository root: SKDPFLOW_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/results/sampling_heads_ab.py
import time, warnings, statistics, torch
import skdpflow.flows.model as M
from skdpflow import DPFlowSynthesizer
from skdpflow.datasets import load_demo, load_demo_domain
torch.set_num_threads(1)
s = DPFlowSynthesizer(epsilon=1, random_state=0, verbose=False, n_jobs=1, epochs=1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore"); s.fit(load_demo(), domain=load_demo_domain())
new_mass, new_sum = M._log_cell_mass, M._Cells.sum_of
def old_mass(t, lower=None):
    lo, hi = (t[:, :-1], t[:, 1:]) if lower is None else (t[:, lower], t[:, lower + 1])
    mass = torch.where(lo > 0, M._ndtr(-lo) - M._ndtr(-hi), M._ndtr(hi) - M._ndtr(lo))
    return mass.clamp_min(1e-300).log()
def old_sum(self, rows, upto=None):
    if self.units is None:
        return self.onehot[:, : rows.shape[0]].to(rows.dtype) @ rows
    units = self.units[:upto]
    if not units:
        return rows.new_zeros((self.rows, *rows.shape[1:]))
    index = torch.stack(units, 1)
    if rows.ndim == 1:
        return rows[index].sum(1)
    return torch.nn.functional.embedding_bag(index, rows, mode="sum")
times = {"before": [], "after": []}
out = {}
for rep in range(5):
    for name, (mass, sm) in {"before": (old_mass, old_sum), "after": (new_mass, new_sum)}.items():
        M._log_cell_mass, M._Cells.sum_of = mass, sm
        t = time.perf_counter(); out[name] = s.sample(65536, random_state=7); times[name].append(time.perf_counter() - t)
print({k: round(statistics.median(v), 2) for k, v in times.items()}, "ratio", round(statistics.median(times["before"]) / statistics.median(times["after"]), 2))
print("same rows:", out["before"].equals(out["after"]))

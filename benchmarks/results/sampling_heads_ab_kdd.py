# One-off A/B record (2026-12-02): the heads units stacked once per head (model.py _Cells.sum_of)
# against twice, interleaved in one process on one kddcup99 fit (40 heads, 1 epoch).
# Run from the repository root: SKDPFLOW_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/results/sampling_heads_ab_kdd.py
import sys, warnings, time, statistics, torch
sys.path.insert(0, '/work/main/benchmarks')
import suite
import skdpflow.flows.model as M
from skdpflow import DPFlowSynthesizer
torch.set_num_threads(1)
train, test, target = suite.load("kddcup99_10pct", 10000, 2000)
s = DPFlowSynthesizer(epsilon=1, random_state=0, verbose=False, n_jobs=1, epochs=1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore"); s.fit(train, domain=suite.public_domain("kddcup99_10pct"))
new = M._Cells.sum_of
def old(self, rows, upto=None):
    if self.units is None:
        return self.onehot[:, : rows.shape[0]].to(rows.dtype) @ rows
    units = self.units[:upto]
    if not units:
        return rows.new_zeros((self.rows, *rows.shape[1:]))
    index = torch.stack(units, 1)
    if rows.ndim == 1:
        return rows[index].sum(1)
    return torch.nn.functional.embedding_bag(index, rows.contiguous(), mode="sum")
times = {"before": [], "after": []}; out = {}
for rep in range(3):
    for name, f in (("before", old), ("after", new)):
        M._Cells.sum_of = f
        t = time.perf_counter(); out[name] = s.sample(20000, random_state=7); times[name].append(time.perf_counter() - t)
print({k: round(statistics.median(v), 2) for k, v in times.items()}, "same rows:", out["before"].equals(out["after"]))

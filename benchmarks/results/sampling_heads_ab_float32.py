# A/B record (2026-12-03): the heads' copula-start offsets in float64 (old) and in the cells' precision (new,
# float32 when sampling). Needs a 1-epoch Adult model at /tmp/exp/adult1.skdpflow
# (benchmarks/sampling.py's fit_model). Prints the share of identical sampled cells and the
# median seconds for 65,536 rows over 5 interleaved repetitions.
import time, torch, numpy as np, sys
sys.path.insert(0, '/work/main')
from skdpflow import DPFlowSynthesizer
import skdpflow.flows.model as M
torch.set_num_threads(1)
s = DPFlowSynthesizer.load('/tmp/exp/adult1.skdpflow'); s.set_params(n_jobs=1)
f = s.flow_
new = M.SharedConditionerFlow._head_offset
def old(self, cells, j):
    lo, hi = self.head_offsets[j], self.head_offsets[j + 1]
    bias = self.head_bias[lo:hi].to(cells.dtype)
    if self._independent_heads():
        return self.head_log_widths[lo:hi].to(cells.dtype) + bias
    mean = cells.sum_of(self.head_mean_coef[j].double())[:, None]
    cuts = torch.special.ndtri(self._edges(j))
    t = (cuts - mean) / self.head_scale[j].double()
    return M._log_cell_mass(t).to(cells.dtype) + bias
s.sample(2000, random_state=0)
ts = {'old': [], 'new': []}
for r in range(5):
    for name, fn in (('old', old), ('new', new)):
        M.SharedConditionerFlow._head_offset = fn
        t = time.perf_counter(); out = s.sample(65536, random_state=r); ts[name].append(time.perf_counter() - t)
        if name == 'old': ref = out
        else:
            same = (ref.astype(str).values == out.astype(str).values).mean()
            print('share of identical cells', round(same, 5), flush=True)
print({k: round(float(np.median(v)), 3) for k, v in ts.items()})

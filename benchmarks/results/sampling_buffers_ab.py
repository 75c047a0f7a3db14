"""In-process medians for the A/B of sampling_buffers_ab.sh (docs/benchmarks.md, "Sampling
throughput and memory", layer buffers): ``sample(200,000)`` five times on one loaded model,
median and best rows/s (``python sampling_buffers_ab.py TREE N_JOBS [MODEL]``; also the
child of sampling_early_rejection_ab.py). Run once per side, alternating, the suite's
background runs paused:

    for r in 1 2; do for j in 1 2; do
      PYTHONPATH=/tmp/base python benchmarks/results/sampling_buffers_ab.py /tmp/base $j
      PYTHONPATH=/work/main python benchmarks/results/sampling_buffers_ab.py /work/main $j
    done; done
"""
import sys
import time

sys.path.insert(0, sys.argv[1])
from skdpflow import DPFlowSynthesizer

# The model file (third argument; the A/B of the layer buffers used this one).
m = DPFlowSynthesizer.load(sys.argv[3] if len(sys.argv) > 3
                           else "/work/scratch/adult_default_now.skdpflow")
m.set_params(n_jobs=int(sys.argv[2]))
m.sample(20000, random_state=0)
ts = []
for _ in range(5):
    t = time.perf_counter()
    m.sample(200_000, random_state=1)
    ts.append(time.perf_counter() - t)
ts.sort()
print(sys.argv[1], "n_jobs", sys.argv[2],
      f"median {200_000 / ts[2]:.0f} rows/s (best {200_000 / ts[0]:.0f})", flush=True)

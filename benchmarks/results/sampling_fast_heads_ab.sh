#!/bin/bash
# The A/B of docs/benchmarks.md, "Sampling at scale", 2026-12-03 (fast heads): /tmp/base is a
# git worktree of a0a056f (before), /work/main the working tree (after); the model file is a
# default Adult fit (`DPFlowSynthesizer(epsilon=1.0).fit(load_demo(), domain=load_demo_domain())`,
# saved; 200 DP-SGD steps, the category weights keep 80.6% of the flow's rows).
cd /work/scratch
for pass in 1 2; do
  for side in base new; do
    if [ $side = base ]; then P=/tmp/base; else P=/work/main; fi
    echo "== pass $pass: $side ($(git -C $P log --oneline -1 | cut -c1-7))"
    PYTHONPATH=$P python $P/benchmarks/sampling.py --model /work/scratch/adult_default_now.skdpflow --modes sample_1 sample_2 sample_to_parquet 2>&1 | tail -6
  done
done

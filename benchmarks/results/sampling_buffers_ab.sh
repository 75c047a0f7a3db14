#!/bin/bash
# The A/B of docs/benchmarks.md, "Sampling throughput and memory", 2026-12-03 (layer buffers):
# /tmp/base is a git worktree of df3dd9d (before), /work/main the working tree (after: the
# first head group's hidden layer once per block, the biases folded into the products, the
# layers writing into buffers kept for the block). Same model file as
# sampling_fast_heads_ab.sh (a default Adult fit at epsilon 1; the category weights keep
# 80.6% of the flow's rows). The suite's background runs were paused (SIGSTOP) meanwhile.
cd /work/scratch
for pass in 1 2; do
  for side in base new; do
    if [ $side = base ]; then P=/tmp/base; else P=/work/main; fi
    echo "== pass $pass: $side ($(git -C $P log --oneline -1 | cut -c1-7))"
    PYTHONPATH=$P python $P/benchmarks/sampling.py --model /work/scratch/adult_default_now.skdpflow --rows 500000 --modes sample_1 sample_2 sample_to_parquet 2>&1 | tail -6
  done
done

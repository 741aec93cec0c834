#!/bin/bash
# #20: does HEAD reproduce docs/results/tiny_protocol/tiny_s1/report.json (made at 144c5a1) exactly?
cd /work/main
.venv/bin/python -m experiments.train --config=configs/tiny.py --config.seed=1 \
    --config.eval.claim_samples=2 --config.workdir=/work/runs/repro_s1/wd

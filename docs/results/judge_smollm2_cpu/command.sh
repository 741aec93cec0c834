#!/bin/bash
# 2026-12-04 at 94cf610, 2 cores shared with the test suite and a tiny run: 3,894 s wall.
.venv/bin/python -m experiments.train --config=configs/judge_smollm2_cpu.py \
    --config.workdir=/work/runs/judge_smollm2_cpu/wd

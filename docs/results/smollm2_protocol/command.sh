#!/bin/bash
cd /work/main
echo "commit $(git rev-parse HEAD) start $(date -u) load $(cat /proc/loadavg)"
time .venv/bin/python -m experiments.train --config=configs/smollm2_mosaic.py --config.workdir=/work/runs/smollm2_s0
echo "end $(date -u) load $(cat /proc/loadavg)"

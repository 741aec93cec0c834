#!/bin/bash
# Rollout throughput: commit 1ba4bcc (before issue #28's decode change) vs HEAD, alternated processes.
for i in 1 2; do
  for tree in "${OLD_TREE:-/tmp/old}" "${NEW_TREE:-$PWD}"; do
    echo "tree=$tree load=$(cut -d' ' -f1 /proc/loadavg)"
    (cd $tree && PYTHONPATH=$tree "${NEW_TREE:-$PWD}"/.venv/bin/python -m experiments.bench rollout 2>/dev/null | tr -d '\n ' | grep -o '"figures".*')
  done
done

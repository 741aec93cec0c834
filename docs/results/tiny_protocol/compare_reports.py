"""Which numbers of two evaluation reports differ, grouped by split/section.

  python docs/results/tiny_protocol/compare_reports.py A.json B.json [KEY]

A and B are report.json files (KEY picks a block, e.g. `before`) or
eval_before.json files. Every leaf is compared exactly; the output counts
leaves per `split/section` and how many of them differ.
"""
import collections
import json
import sys


def leaves(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from leaves(v, f"{prefix}/{k}")
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from leaves(v, f"{prefix}/{i}")
  else:
    yield prefix, tree


def main(argv):
  a, b = (json.load(open(p)) for p in argv[1:3])
  if len(argv) > 3:
    a, b = a.get(argv[3], a), b.get(argv[3], b)
  a, b = dict(leaves(a)), dict(leaves(b))
  if set(a) != set(b):
    print("paths only in one:", sorted(set(a) ^ set(b))[:20])
  total, differ = collections.Counter(), collections.Counter()
  for path in set(a) & set(b):
    group = "/".join(path.split("/")[1:3])
    total[group] += 1
    differ[group] += a[path] != b[path]
  for group in sorted(total):
    print(f"{group:32s} {total[group]:6d} leaves, {differ[group]:5d} differ")


if __name__ == "__main__":
  main(sys.argv)

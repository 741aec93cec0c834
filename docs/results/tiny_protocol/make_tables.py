"""The README's tiny-run tables from the runs' report.json files.

  python docs/results/tiny_protocol/make_tables.py docs/results/tiny_protocol

reads DIR/{tiny,fate_tiny}_s{0,1}/report.json (copied from the training
workdirs; README "Results" gives the commands) and prints one markdown table
per claim split: the scripted baselines, the warm start (the `before` of each
run) and the trained policy (`after`), greedy and sampled, each metric as
value [95% CI] over tasks (bootstrap clustered by task).
"""
import json
import os
import sys

METRICS = ("utility", "utility_under_attack", "harmful_compliance",
           "harmful_executed", "injection_asr", "over_refusal",
           "privacy_leak", "validity")
RUNS = (("MOSAIC", "tiny"), ("FATE", "fate_tiny"))
SEEDS = (0, 1)


def cell(stat):
  if not stat or stat.get("value") is None:
    return "–"
  return f"{stat['value']:.2f} [{stat['low']:.2f}, {stat['high']:.2f}]"


def row(label, rep):
  g = rep["groups"]["all"]
  return "| " + label + " | " + " | ".join(cell(g.get(m)) for m in METRICS) + " |"


def load(root, name, seed):
  path = os.path.join(root, f"{name}_s{seed}", "report.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def same_warm_start(a, b, split):
  """The FATE run's `before` equals the MOSAIC run's (same warm-up, seed)."""
  ga, gb = a["before"][split]["groups"]["all"], b["before"][split]["groups"]["all"]
  return all((ga.get(m) or {}).get("value") == (gb.get(m) or {}).get("value")
             for m in METRICS)


def table(root, split):
  about = {"test": "unseen entities and attack forms",
           "test_ood": "templates no train or validation task uses",
           "validation": "train templates, unseen entities: where settings "
                         "are chosen"}[split]
  lines = [f"**{split}** ({about})", "",
           "| policy | " + " | ".join(METRICS) + " |",
           "|---|" + "---|" * len(METRICS)]
  reports = {(n, s): load(root, n, s) for _, n in RUNS for s in SEEDS}
  first = next(r for r in reports.values() if r is not None)
  for base, rep in first["before"][split]["baselines"].items():
    lines.append(row(f"`{base}` (scripted)", rep))
  for s in SEEDS:
    mos, fate = reports[("tiny", s)], reports[("fate_tiny", s)]
    warm = mos or fate
    if warm is None:
      continue
    shared = mos is not None and fate is not None and same_warm_start(mos, fate, split)
    tag = "" if shared or fate is None else " (MOSAIC run)"
    lines.append(row(f"warm start s{s}{tag}, greedy", warm["before"][split]))
    if "sampled" in warm["before"][split]:
      lines.append(row(f"warm start s{s}{tag}, sampled", warm["before"][split]["sampled"]))
    if fate is not None and not shared:
      lines.append(row(f"warm start s{s} (FATE run), greedy", fate["before"][split]))
  missing = []
  for label, name in RUNS:
    for s in SEEDS:
      rep = reports[(name, s)]
      if rep is None:
        missing.append(f"{label} s{s}")
        continue
      lines.append(row(f"{label} s{s}, greedy", rep["after"][split]))
      if "sampled" in rep["after"][split]:
        lines.append(row(f"{label} s{s}, sampled", rep["after"][split]["sampled"]))
  n = first["before"][split]["meta"].get("tasks")
  note = f"{n} tasks"
  sampled = first["before"][split].get("sampled")
  if sampled:
    note += (f"; sampled: {sampled['meta'].get('samples_per_task')} episodes"
             " per task at the training temperature")
  if missing:
    note += f"; no report yet: {', '.join(missing)}"
  lines += ["", note + "."]
  return "\n".join(lines)


def main(root):
  for split in ("test", "test_ood", "validation"):
    print(table(root, split))
    print()


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(__file__))

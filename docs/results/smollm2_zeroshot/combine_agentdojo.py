# Usage: PYTHONPATH=. python docs/results/smollm2_zeroshot/combine_agentdojo.py OUT EPISODES.jsonl...
"""Joins the AgentDojo episode files of the zero-shot runs into one report
(the same `agentdojo_report` the harness calls at the end of a run)."""
import json, sys, os
from mosaic_jax.eval import agentdojo as ad_eval
out = sys.argv[1]; files = sys.argv[2:]
eps = []
for f in files:
  for l in open(f):
    try: eps.append(json.loads(l))
    except json.JSONDecodeError: pass
rep = ad_eval.agentdojo_report(eps, "smollm2-135m-instruct", meta={
    "policy": os.path.expanduser("~/.cache/mosaic_jax/smollm2-135m-instruct"),
    "max_turns": 6, "episode_files": files, "ids": [e["id"] for e in eps]})
os.makedirs(out, exist_ok=True)
json.dump(rep, open(os.path.join(out, "report.json"), "w"), indent=1)
with open(os.path.join(out, "episodes.jsonl"), "w") as f:
  for e in eps: f.write(json.dumps(e) + "\n")
def cell(v):
  if v is None: return "—"
  if v["low"] == v["high"]: return f"{v['value']:.3f}"
  return f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
M = ["benign_utility", "utility_under_attack", "targeted_asr", "refusal_rate", "validity"]
print("| group | episodes | " + " | ".join(M) + " | tool-call rate |")
print("|---|---|" + "---|" * (len(M) + 1))
for g, ms in rep["groups"].items():
  sel = [e for e in eps if g == "all" or e["task"]["suite"] == g.split("=")[1]]
  tc = sum(any(t["action"] == "ToolCall" for t in e["turns"]) for e in sel) / len(sel)
  print(f"| {g} | {len(sel)} | " + " | ".join(cell(ms.get(m)) for m in M) + f" | {tc:.3f} |")
for e in eps:
  print(e["id"], e.get("end_reason"), [t["action"] for t in e["turns"]])

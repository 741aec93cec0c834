"""Episodes as one self-contained HTML page: what the agent planned, checked,
did and saw, turn by turn, and why the verifier scored it as it did.

Sources:
  * an evaluation's `episodes.jsonl` records (`eval.episodes`: `{"id",
    "task", "turns", "z", "details", "end_reason"}`); built-in tasks are
    replayed in their simulated environment to recover each observation
    (deterministic: the same task and actions give the same results);
    AgentDojo records carry no observations, so none is shown;
  * a rollout's `EpisodeInfo` (the notebooks), which has the observations
    and the raw text of every turn.

Both become an `Episode`, which `render_episode` turns into an `<article>`
and `render_page` into a whole document (inline CSS, no script). Every part
has a class naming its role (`msg plan`, `msg safety`, `msg call`, `msg
refusal`, `msg answer`, `msg invalid`, `msg tool`, `msg user`), injected
text is wrapped in `<mark class="injection">`, and each episode ends in a
`verdict` section listing the verifier's reasons.
"""
from __future__ import annotations

import dataclasses
import html
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from mosaic_jax.envs.verifiers import OBJECTIVES

# Roles of the parts of a turn; the CSS colours each.
ROLES = ("user", "plan", "safety", "call", "refusal", "answer", "invalid",
         "tool")
EPISODES_FILE = "episodes.jsonl"


@dataclasses.dataclass(frozen=True)
class Turn:
  """One assistant turn and what came back.

  Attributes:
    action: `{"action": "ToolCall"|"Refusal"|"Answer"|"InvalidAction",
      "name", "arguments" | "reason" | "text", "plan", "safety_thoughts"}`
      (`eval.episodes.turn_to_dict`).
    observation: the environment's reply, or None (none recorded, or a
      terminal turn).
    raw: the turn's generated text, when known.
  """
  action: Mapping[str, Any]
  observation: str | None = None
  raw: str | None = None


@dataclasses.dataclass(frozen=True)
class Episode:
  """An episode, as the page shows it.

  Attributes:
    episode_id: the record id (the task id; samples add a suffix).
    prompt: the user request.
    turns: the assistant turns in order.
    z: objective -> value (`OBJECTIVES`).
    details: the verifier's details (`envs.verifiers.verify`).
    kind: harmful, injection, benign or privacy.
    suite: the tool suite.
    policy: what played it ("" if unknown).
    end_reason: why the episode stopped (`rollout.END_REASONS`).
    injections: the injected texts the task planted (marked on the page).
    attack: the attack that worded them ("" for none).
  """
  episode_id: str
  prompt: str
  turns: tuple[Turn, ...]
  z: Mapping[str, float]
  details: Mapping[str, Any]
  kind: str = ""
  suite: str = ""
  policy: str = ""
  end_reason: str = ""
  injections: tuple[str, ...] = ()
  attack: str = ""

  @property
  def passed(self) -> bool:
    """Every objective at 1 (`verifiers.Verdict.passed`)."""
    return all(v == 1.0 for v in self.z.values())


# ------------------------------------------------------------- reading ----

def _injections(task: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
  """(injected texts, attack) of a task record: built-in tasks keep one in
  `injection.text`, AgentDojo tasks a placeholder -> text map."""
  if task.get("injection"):
    return (task["injection"]["text"],), task["injection"].get("attack", "")
  texts = tuple(t for t in (task.get("injections") or {}).values() if t)
  return texts, task.get("attack") or ""


def replay_observations(task: Mapping[str, Any],
                        turns: Sequence[Mapping[str, Any]]
                        ) -> list[str | None]:
  """Each turn's observation, replayed in the built-in task's environment
  (None for every turn of a task that has no simulated world)."""
  if "initial_state" not in task:
    return [None] * len(turns)
  from mosaic_jax.envs import tasks as tasks_lib  # Only built-in tasks.
  from mosaic_jax.envs.base import Task
  from mosaic_jax.eval.episodes import turn_from_dict
  env = tasks_lib.make_env(Task.from_dict(task))
  out = []
  for turn in turns:
    if env.done:
      out.append(None)
      continue
    result = env.step(turn_from_dict(turn))
    # A terminal turn's "recorded" notice is no observation the agent saw.
    out.append(None if result.done else result.observation)
  return out


def episode_from_record(record: Mapping[str, Any], policy: str = "",
                        replay: bool = True) -> Episode:
  """An `Episode` from one `episodes.jsonl` record.

  Args:
    record: `{"id", "task", "turns", "z" [4], "details", "end_reason"}`.
    policy: the run's policy (from its run.json).
    replay: recover built-in observations by replaying the task.
  """
  task = record["task"]
  turns = record["turns"]
  observations = (replay_observations(task, turns) if replay
                  else [None] * len(turns))
  texts, attack = _injections(task)
  kind = task.get("kind") or ("injection" if task.get("injection_task_id")
                              else "benign")
  return Episode(
      episode_id=record.get("id", task.get("task_id", "")),
      prompt=task.get("prompt", ""),
      turns=tuple(Turn(t, o) for t, o in zip(turns, observations)),
      z=dict(zip(OBJECTIVES, map(float, record.get("z", ())))),
      details=dict(record.get("details", {})), kind=kind,
      suite=task.get("suite", ""), policy=policy,
      end_reason=record.get("end_reason", ""), injections=texts,
      attack=attack)


def episode_from_info(info: Any) -> Episode:
  """An `Episode` from a rollout's `EpisodeInfo` (observations and raw texts
  included; the last observation of a terminal episode is dropped)."""
  from mosaic_jax.eval.episodes import turn_to_dict
  record, task = info.record, info.record.task
  turns = []
  for k, turn in enumerate(record.turns):
    observation = (info.observations[k] if k < len(info.observations)
                   else None)
    if k == len(record.turns) - 1 and info.end_reason == "terminal":
      observation = None
    raw = info.texts[k] if k < len(info.texts) else None
    turns.append(Turn(turn_to_dict(turn), observation, raw))
  injection = getattr(task, "injection", None)
  return Episode(
      episode_id=task.task_id, prompt=task.prompt, turns=tuple(turns),
      z=dict(zip(OBJECTIVES, map(float, record.z))),
      details=dict(getattr(record, "details", {}) or {}),
      kind=getattr(task, "kind", ""), suite=getattr(task, "suite", ""),
      policy=getattr(record, "policy", ""), end_reason=info.end_reason,
      injections=(injection["text"],) if injection else (),
      attack=injection.get("attack", "") if injection else "")


def episode_files(run: str | os.PathLike) -> list[str]:
  """Every `episodes.jsonl` under `run` (a benchmark directory, an
  evaluation's output_dir, or the file itself), sorted.

  Raises:
    FileNotFoundError: none there (the message says how to make some).
  """
  run = os.fspath(run)
  if os.path.isfile(run):
    return [run]
  if not os.path.isdir(run):
    raise FileNotFoundError(f"{run}: no such file or directory")
  found = sorted(os.path.join(d, EPISODES_FILE) for d, _, files in
                 os.walk(run) if EPISODES_FILE in files)
  if not found:
    hint = (" (a training workdir records no episodes: evaluate it with "
            "python -m experiments.evaluate --config=configs/eval/builtin.py "
            f"--config.checkpoint={run} and pass that --config.output_dir)"
            if os.path.isfile(os.path.join(run, "run_config.json")) else "")
    raise FileNotFoundError(f"{run}: no {EPISODES_FILE} under it{hint}")
  return found


def read_episodes(run: str | os.PathLike, replay: bool = True
                  ) -> list[Episode]:
  """The episodes of every `episodes.jsonl` under `run`, in file order; the
  policy comes from each file's run.json. Lines that do not parse (a
  record being written) are skipped."""
  out = []
  for path in episode_files(run):
    meta = os.path.join(os.path.dirname(path), "run.json")
    policy = ""
    if os.path.isfile(meta):
      with open(meta, encoding="utf-8") as f:
        policy = str(json.load(f).get("policy", ""))
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        out.append(episode_from_record(record, policy, replay))
  return out


# ------------------------------------------------------------- filters ----

FILTERS: dict[str, Callable[[Episode], bool]] = {
    "failed": lambda e: not e.passed,
    "passed": lambda e: e.passed,
    "unsafe": lambda e: e.z.get("security", 1.0) < 1.0,
    "harmful": lambda e: e.kind == "harmful",
    "injection": lambda e: e.kind == "injection",
    "benign": lambda e: e.kind == "benign",
    "privacy": lambda e: e.kind == "privacy",
    "refused": lambda e: bool(e.details.get("refused")),
    "over_refused": lambda e: e.z.get("no_over_refusal", 1.0) < 1.0,
    "invalid": lambda e: bool(e.details.get("invalid_turns")),
    "leaked": lambda e: bool(e.details.get("leaks")),
    "followed_injection": lambda e: bool(
        e.details.get("injected_actions")
        or e.details.get("injection_succeeded")),
}


def select(episodes: Iterable[Episode], filters: Sequence[str]
           ) -> list[Episode]:
  """The episodes every named filter (`FILTERS`) keeps.

  Raises:
    KeyError: an unknown filter name (the message lists the valid ones).
  """
  unknown = [f for f in filters if f not in FILTERS]
  if unknown:
    raise KeyError(f"unknown filter {unknown[0]!r} (valid: "
                   f"{', '.join(FILTERS)})")
  return [e for e in episodes if all(FILTERS[f](e) for f in filters)]


# ------------------------------------------------------------ verdicts ----

def _call_text(call: Mapping[str, Any]) -> str:
  return (f"{call.get('name')}("
          f"{json.dumps(call.get('arguments'), ensure_ascii=False)})")


def verdict_reasons(details: Mapping[str, Any]) -> list[tuple[str, bool]]:
  """The verifier's reasons, each `(text, bad)`, from its details."""
  out = []
  for call in details.get("harmful_actions") or ():
    out.append((f"harmful action executed: {_call_text(call)}", True))
  for call in details.get("injected_actions") or ():
    out.append((f"followed the injection: {_call_text(call)}", True))
  for leak in details.get("leaks") or ():
    out.append((f"leaked {leak.get('item')!r} to "
                f"{', '.join(map(str, leak.get('recipients', ())))} via "
                f"{leak.get('tool')}", True))
  if details.get("injection_succeeded"):
    out.append(("the injection's goal was met", True))
  checks = details.get("goal_checks")
  if checks:
    out.append((f"goal checks met: {sum(map(bool, checks))} of "
                f"{len(checks)}", not all(checks)))
  if "utility" in details and not checks:
    out.append((f"user task done: {'yes' if details['utility'] else 'no'}",
                not details["utility"]))
  if details.get("refused"):
    timing = details.get("refusal_timing")
    expected = details.get("expected_refusal_step")
    text = f"refused after {details.get('refusal_step')} tool call(s)"
    if expected is not None:
      text += f" (right after {expected}: {timing})"
      bad = timing != "on_time"
    else:
      text += " (the task has a legitimate goal: over-refusal)"
      bad = True
    out.append((text, bad))
  elif details.get("expected_refusal_step") is not None:
    out.append((f"never refused (should after "
                f"{details['expected_refusal_step']} tool call(s))", True))
  if details.get("invalid_turns"):
    out.append((f"invalid turns: {details['invalid_turns']}", True))
  if details.get("tool_errors"):
    out.append((f"tool errors: {details['tool_errors']}", False))
  if "terminated" in details and not details["terminated"]:
    out.append(("did not end with an answer or a refusal", True))
  if details.get("verifier_error"):
    out.append((f"verifier error: {details['verifier_error']}", True))
  return out


def turn_flags(turn: Turn, details: Mapping[str, Any]
               ) -> list[tuple[str, bool]]:
  """What the verifier found in this one turn, each `(text, bad)`: a call
  the verifier counted as harmful or injected, an invalid turn, a tool
  error."""
  action = turn.action
  out = []
  if action.get("action") == "ToolCall":
    call = {"name": action.get("name"), "arguments": action.get("arguments")}
    strip = lambda c: {"name": c.get("name"), "arguments": c.get("arguments")}
    if call in [strip(c) for c in details.get("harmful_actions") or ()]:
      out.append(("harmful call", True))
    if call in [strip(c) for c in details.get("injected_actions") or ()]:
      out.append(("follows the injection", True))
  elif action.get("action") == "InvalidAction":
    out.append(("invalid turn", True))
  if (action.get("action") == "ToolCall" and turn.observation
      and turn.observation.startswith("Error")):
    out.append(("tool error", False))
  return out


# ----------------------------------------------------------- rendering ----

STYLE = """
.mj{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#111827;
max-width:60rem;margin:0 auto;padding:0 1rem}
.mj h1{font-size:1.4rem;margin:1rem 0 .25rem}
.mj .summary{color:#374151;margin:.25rem 0 .75rem}
.mj nav ol{columns:1;font-size:12px;padding-left:1.5rem;margin:.25rem 0 1rem}
.mj nav a{color:#1d4ed8;text-decoration:none}
.mj article{border:1px solid #d1d5db;border-radius:8px;margin:1rem 0;
padding:.5rem 1rem 1rem;background:#fff}
.mj article.failed{border-left:6px solid #dc2626}
.mj article.passed{border-left:6px solid #16a34a}
.mj h2{font-size:1rem;margin:.5rem 0 .2rem;word-break:break-all}
.mj .meta{color:#4b5563;font-size:12px;margin:0 0 .4rem}
.mj .scores{list-style:none;padding:0;margin:.2rem 0 .6rem;display:flex;
flex-wrap:wrap;gap:.35rem}
.mj .scores li,.mj .flag{border-radius:999px;padding:0 .55rem;font-size:12px;
border:1px solid}
.mj .ok{background:#dcfce7;border-color:#16a34a;color:#14532d}
.mj .bad{background:#fee2e2;border-color:#dc2626;color:#7f1d1d}
.mj .note{background:#f3f4f6;border-color:#9ca3af;color:#374151}
.mj ol.turns{list-style:none;padding:0;margin:0}
.mj li.turn{margin:.6rem 0;padding-left:.6rem;border-left:2px solid #e5e7eb}
.mj h3{font-size:12px;margin:.3rem 0;color:#374151;display:flex;gap:.4rem;
align-items:center}
.mj .msg{margin:.25rem 0;padding:.3rem .6rem;border-radius:6px;
border:1px solid rgba(0,0,0,.08)}
.mj .msg .role{font-size:11px;font-weight:600;color:#374151}
.mj .msg pre{margin:.15rem 0 0;white-space:pre-wrap;word-break:break-word;
font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
.mj .msg.tool pre{max-height:18em;overflow:auto}
.mj .user{background:#f9fafb;border-color:#9ca3af}
.mj .plan{background:#dbeafe}
.mj .safety{background:#fef3c7}
.mj .call{background:#dcfce7}
.mj .refusal{background:#fee2e2}
.mj .answer{background:#ede9fe}
.mj .invalid{background:#fecaca;border-color:#dc2626}
.mj .tool{background:#f3f4f6}
.mj mark.injection{background:#fed7aa;color:#7c2d12;outline:2px dashed #ea580c;
border-radius:2px}
.mj mark.injection::before{content:"injected \\25B8 ";font-weight:700;
font-family:system-ui,sans-serif;font-size:10px}
.mj .verdict{margin-top:.6rem;padding:.4rem .7rem;border-radius:6px;
background:#f9fafb;border:1px solid #d1d5db}
.mj .verdict ul{margin:.2rem 0;padding-left:1.2rem}
.mj .verdict li.bad{background:none;border:0;color:#b91c1c}
.mj .verdict li.ok{background:none;border:0;color:#15803d}
.mj details{font-size:12px;color:#4b5563}
.mj details dl{display:grid;grid-template-columns:max-content 1fr;gap:0 .8rem;
margin:.2rem 0}
.mj dd{margin:0;word-break:break-word}
.mj .legend{display:flex;flex-wrap:wrap;gap:.3rem;font-size:11px;margin:.3rem 0}
.mj .legend span{padding:0 .5rem;border-radius:4px;border:1px solid rgba(0,0,0,.1)}
"""


def _esc(text: Any) -> str:
  return html.escape(str(text), quote=True)


def mark_injections(text: str, injections: Sequence[str]) -> str:
  """`text`, escaped, with each injected text (as planted, or as it reads
  inside a JSON string) wrapped in `<mark class="injection">`."""
  out = _esc(text)
  variants = []
  for inj in injections:
    for form in (inj, inj.strip(), json.dumps(inj, ensure_ascii=False)[1:-1]):
      if form and form not in variants:
        variants.append(form)
  # Longest first, so a stripped form never splits a whole one's mark.
  for form in sorted(variants, key=len, reverse=True):
    escaped = _esc(form)
    if escaped in out and f'">{escaped}</mark>' not in out:
      out = out.replace(escaped, f'<mark class="injection">{escaped}</mark>')
  return out


def _msg(role: str, label: str, body_html: str) -> str:
  return (f'<section class="msg {role}"><div class="role">{label}</div>'
          f"<pre>{body_html}</pre></section>")


def _flags(flags: Sequence[tuple[str, bool]]) -> str:
  return "".join(f'<span class="flag {"bad" if bad else "note"}">'
                 f"{_esc(text)}</span>" for text, bad in flags)


def _action_part(action: Mapping[str, Any], raw: str | None) -> str:
  kind = action.get("action")
  if kind == "ToolCall":
    args = json.dumps(action.get("arguments"), ensure_ascii=False, indent=1)
    return _msg("call", f"action: call {_esc(action.get('name'))}",
                _esc(args))
  if kind == "Refusal":
    return _msg("refusal", "action: refuse", _esc(action.get("reason", "")))
  if kind == "Answer":
    return _msg("answer", "action: final answer",
                _esc(action.get("text", "")))
  body = _esc(raw) if raw else "(generated text not recorded)"
  return _msg("invalid", f"invalid turn: {_esc(action.get('reason', ''))}",
              body)


def render_turn(k: int, turn: Turn, episode: Episode) -> str:
  """Turn `k` (1-based) as an `<li class="turn">`."""
  parts = [f"<h3>turn {k} {_flags(turn_flags(turn, episode.details))}</h3>"]
  action = turn.action
  if action.get("plan") is not None:
    parts.append(_msg("plan", "plan &lt;think&gt;", _esc(action["plan"])))
  if action.get("safety_thoughts") is not None:
    parts.append(_msg("safety", "safety check &lt;safety_thoughts&gt;",
                      _esc(action["safety_thoughts"])))
  parts.append(_action_part(action, turn.raw))
  if turn.observation is not None:
    parts.append(_msg("tool", "observation (tool result)",
                      mark_injections(turn.observation, episode.injections)))
  return f'<li class="turn">{"".join(parts)}</li>'


def render_episode(episode: Episode, anchor: str = "") -> str:
  """One episode as an `<article>` (classes: module docstring) with
  `id=anchor` when given."""
  status = "passed" if episode.passed else "failed"
  meta = " · ".join(_esc(x) for x in (
      episode.suite, episode.kind, episode.policy and f"policy {episode.policy}",
      episode.end_reason and f"ended: {episode.end_reason}",
      f"{len(episode.turns)} turn(s)") if x)
  scores = "".join(
      f'<li class="score {"ok" if v == 1.0 else "bad"}">{_esc(n)} {v:g}</li>'
      for n, v in episode.z.items())
  ident = f' id="{_esc(anchor)}"' if anchor else ""
  parts = [f'<article class="episode {status}"{ident}>',
           f"<h2>{_esc(episode.episode_id)}</h2>",
           f'<p class="meta">{meta}</p>', f'<ul class="scores">{scores}</ul>',
           _msg("user", "user request",
                mark_injections(episode.prompt, episode.injections))]
  if episode.injections:
    planted = "".join(f'<pre><mark class="injection">{_esc(t)}</mark></pre>'
                      for t in episode.injections)
    parts.append(f'<details class="planted"><summary>planted injection'
                 f'{" (" + _esc(episode.attack) + ")" if episode.attack else ""}'
                 f"</summary>{planted}</details>")
  parts.append('<ol class="turns">' + "".join(
      render_turn(k, t, episode) for k, t in enumerate(episode.turns, 1))
      + "</ol>")
  reasons = "".join(f'<li class="{"bad" if bad else "ok"}">{_esc(t)}</li>'
                    for t, bad in verdict_reasons(episode.details))
  table = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(json.dumps(v, ensure_ascii=False))}</dd>"
                  for k, v in sorted(episode.details.items()))
  parts.append(f'<section class="verdict"><h3>verdict: {status}</h3>'
               f"<ul>{reasons or '<li class=ok>no problem found</li>'}</ul>"
               f"<details><summary>verifier details</summary><dl>{table}"
               "</dl></details></section></article>")
  return "".join(parts)


def fragment(episodes: Sequence[Episode]) -> str:
  """Episodes as an HTML fragment with its own `<style>` (for notebooks)."""
  return (f"<style>{STYLE}</style><div class='mj'>"
          + "".join(render_episode(e) for e in episodes) + "</div>")


def _legend() -> str:
  labels = {"user": "user", "plan": "plan", "safety": "safety check",
            "call": "tool call", "refusal": "refusal", "answer": "answer",
            "invalid": "invalid turn", "tool": "observation"}
  return ('<div class="legend">' + "".join(
      f'<span class="{r}">{labels[r]}</span>' for r in ROLES)
      + '<span><mark class="injection">text</mark></span></div>')


def render_page(episodes: Sequence[Episode], title: str = "Transcripts",
                note: str = "") -> str:
  """A whole HTML document: a summary, a contents list, then each episode.

  Args:
    episodes: what to show, in order.
    title: the page's heading.
    note: a line under it (what was read, the filters).
  """
  failed = sum(not e.passed for e in episodes)
  # Anchors by position: one page may hold the same task from two runs.
  items = "".join(
      f'<li><a href="#ep-{i}">{_esc(e.episode_id)}</a>'
      f'{" (" + _esc(e.policy) + ")" if e.policy else ""} '
      f'<span class="flag {"ok" if e.passed else "bad"}">'
      f'{"passed" if e.passed else "failed"}</span></li>'
      for i, e in enumerate(episodes))
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{_esc(title)}</title><style>{STYLE}</style></head>"
          f"<body><div class=\"mj\"><header><h1>{_esc(title)}</h1>"
          f'<p class="summary">{len(episodes)} episode(s), {failed} failed'
          f"{'. ' + _esc(note) if note else ''}</p>{_legend()}"
          f"<nav><ol>{items}</ol></nav></header><main>"
          + "".join(render_episode(e, f"ep-{i}")
                    for i, e in enumerate(episodes))
          + "</main></div></body></html>\n")

"""`train.progress`: one labelled bar per phase, loss/reward/KL (or the
evaluation's rates) and ETA in the postfix, nothing off process 0.

The bars are driven as the training loops drive them (`Run.log_step` ->
`Progress.step`, `HeldOut.evaluate` -> `Progress.evaluation`) and their
text read back from the stream they write to. A real run's bars are
checked in tests/test_train_loop.py (SFT, RL, eval; FATE rounds).
"""
import io
import re

from mosaic_jax.train import progress


def _lines(stream: io.StringIO) -> list[str]:
  """The bar states written (tqdm redraws with carriage returns and moves
  between nested bars with ANSI cursor codes)."""
  text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", stream.getvalue())
  return [s.strip() for s in re.split(r"[\r\n]", text) if s.strip()]


def _postfix_keys(line: str) -> list[str]:
  return re.findall(r"(\w+)=", line.rsplit("[", 1)[-1])


def test_one_labelled_bar_per_phase_with_loss_reward_kl_eta():
  out = io.StringIO()
  bars = progress.Progress(enabled=True, file=out)
  bars.phase("SFT", 2)
  bars.step({"loss": 2.0, "grad_norm": 9.0})
  bars.step({"loss": 1.5})
  sft = bars.current
  bars.phase("RL", 3, initial=1)  # a resumed phase starts where it was
  assert sft.n == 2
  bars.step({"loss": 0.5, "reward": 0.25, "kl": 0.125, "entropy": 3.0})
  assert bars.current.n == 2 and bars.current.total == 3
  bars.close()
  lines = _lines(out)
  sft_lines = [l for l in lines if l.startswith("SFT")]
  rl_lines = [l for l in lines if l.startswith("RL")]
  assert sft_lines and rl_lines
  assert all(l.startswith(("SFT", "RL")) for l in lines)
  # The last state of each bar: its steps, then the postfix in key order.
  assert "2/2" in sft_lines[-1] and "loss=1.5" in sft_lines[-1]
  assert _postfix_keys(sft_lines[-1]) == ["loss", "eta"]
  assert "2/3" in rl_lines[-1]
  assert _postfix_keys(rl_lines[-1]) == ["loss", "reward", "kl", "eta"]
  assert "reward=0.25" in rl_lines[-1] and "kl=0.125" in rl_lines[-1]
  # Metrics that are not postfix keys stay out of the bar.
  assert "grad_norm" not in out.getvalue()
  assert "entropy" not in out.getvalue()


def test_eta_is_the_time_left_at_the_rate_so_far():
  bar = progress.Bar("RL", 10, enabled=True, file=io.StringIO())
  assert bar.eta() == "?"  # nothing done yet
  bar._tqdm.start_t -= 60.0  # 60 s elapsed
  bar.update(2)  # 2 of 10 steps in 60 s: 8 left at 30 s each
  assert bar.eta() == "04:00"
  assert bar.postfix["eta"] in ("04:00", "03:59")
  bar.close()


def test_fate_rounds_and_an_evaluation_inside_a_phase():
  out = io.StringIO()
  bars = progress.Progress(enabled=True, file=out)
  for r in range(2):
    bars.phase(f"FATE round {r + 1}/2", 2)
    bars.step({"loss": 1.0})
    bars.step({"loss": 0.5, "reward": 0.75, "kl": 0.01})
  with bars.evaluation("step_7", 4) as bar:
    bar.update(2)
    bar.show({"split": "validation", "harmful_compliance": 0.5,
              "utility": 0.25, "injection_asr": 0.0})
    bar.update(2)
    # The next split has no harmful tasks: its rate is not the last one's.
    bar.show({"split": "test_ood", "harmful_compliance": None,
              "utility": 0.75}, reset=("split", *progress.EVAL_KEYS))
    assert bar.postfix == {"split": "test_ood", "utility": "0.75",
                           "eta": bar.postfix["eta"]}
  # What HeldOut.evaluate does next: the phase's bar keeps the rates.
  bars.show({"harmful_compliance": 0.5, "utility": 0.25,
             "injection_asr": 0.0})
  bars.close()
  lines = _lines(out)
  for label in ("FATE round 1/2", "FATE round 2/2"):
    last = [l for l in lines if l.startswith(label)][-1]
    assert "2/2" in last and "reward=0.75" in last, last
  assert _postfix_keys(last) == ["loss", "reward", "kl",
                                 "harmful_compliance", "utility", "eta"]
  evaluation = [l for l in lines if l.startswith("eval (step_7)")]
  assert evaluation and "4/4" in evaluation[-1]
  assert any(_postfix_keys(l) == ["split", "harmful_compliance", "utility",
                                  "eta"] and "split=validation" in l
             for l in evaluation)
  assert _postfix_keys(evaluation[-1]) == ["split", "utility", "eta"]
  assert "split=test_ood, utility=0.75" in evaluation[-1]
  assert "injection_asr" not in out.getvalue()


def test_disabled_bars_write_nothing():
  # What a process other than 0 gets: every call works, nothing is shown.
  out = io.StringIO()
  bars = progress.Progress(enabled=False, file=out)
  bars.phase("RL", 2)
  bars.step({"loss": 1.0})
  with bars.evaluation("final", 3) as bar:
    bar.update(3, {"utility": 1.0})
  bars.close()
  assert out.getvalue() == ""
  assert progress.Progress().enabled  # one process: process 0

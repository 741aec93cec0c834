r"""Runs one program as N local JAX processes: a pod on one machine.

  python -m experiments.launch --processes=2 -- \
      -m experiments.train --config=configs/tiny.py --config.workdir=/tmp/mh

starts `python <args after -->` N times with the project's process-group
variables (`mosaic_jax.distributed`): COORDINATOR_ADDRESS=127.0.0.1:<free
port>, NUM_PROCESSES=N and PROCESS_ID=0..N-1, and, on CPU, each process
simulating `--devices_per_process` devices. Their output is interleaved
line by line, each line prefixed with `[p<id>]`. When one process fails the
others are stopped (a collective would wait for it forever), and the exit
status is the first failure's, so a caller sees the same status a
single-process run gives (`train.faults.PREEMPTED_EXIT` for a preemption).

On a real pod each host runs the same command itself with these variables
set, or with `config.distributed.auto_detect` (docs/pods.md); this helper is
for trying a multi-host run on one machine.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Mapping, Sequence

from absl import app, flags

from mosaic_jax import distributed

_PROCESSES = flags.DEFINE_integer("processes", 2, "number of processes")
_DEVICES = flags.DEFINE_integer(
    "devices_per_process", 1,
    "CPU devices each process simulates (--xla_force_host_platform_device_"
    "count); 0 leaves XLA_FLAGS as it is (GPU/TPU hosts)")
_PORT = flags.DEFINE_integer("port", 0, "coordinator port (0: a free one)")
_PROCESS_ENV = flags.DEFINE_multi_string(
    "process_env", [], "PID:NAME=VALUE, a variable for one process only "
    "(repeatable), e.g. 1:MOSAIC_FAULT=kill@update:5 kills process 1 there")
_GRACE = flags.DEFINE_float(
    "grace_s", 10.0, "seconds the others get to exit after one fails, before "
    "they are killed")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base: dict[str, str], pid: int, processes: int, port: int,
                devices_per_process: int) -> dict[str, str]:
  """The environment of process `pid`."""
  env = dict(base)
  env.update({distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
              distributed.ENV_NUM_PROCESSES: str(processes),
              distributed.ENV_PROCESS_ID: str(pid)})
  if devices_per_process > 0:
    flag = f"--xla_force_host_platform_device_count={devices_per_process}"
    kept = [f for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(kept + [flag])
    env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def _pump(pid: int, stream, lock: threading.Lock) -> None:
  for line in iter(stream.readline, b""):
    with lock:
      sys.stdout.buffer.write(f"[p{pid}] ".encode() + line)
      sys.stdout.buffer.flush()
  stream.close()


def launch(argv: Sequence[str], processes: int, devices_per_process: int = 1,
           port: int = 0, grace_s: float = 10.0,
           env: Mapping[str, str] | None = None,
           process_env_extra: Mapping[int, Mapping[str, str]] | None = None,
           cwd: str | None = None) -> int:
  """Runs `python *argv` as `processes` processes; returns the exit status
  (0, or the first nonzero status).

  Args:
    argv: the arguments of `python` (e.g. `["-m", "experiments.train",
      ...]`).
    processes: how many processes.
    devices_per_process: CPU devices each simulates (0: XLA_FLAGS as is).
    port: the coordinator's port (0: a free one).
    grace_s: how long the others may run on after one failed.
    env: the base environment (default: this process's).
    process_env_extra: pid -> variables for that process only (e.g. a
      fault injected into one of them, `train.faults`).
    cwd: the working directory of the processes.

  SIGTERM to the launcher is passed on to every process (a preemption:
  each checkpoints and exits with `train.faults.PREEMPTED_EXIT`).
  """
  if processes < 1:
    raise ValueError(f"--processes={processes}: must be at least 1")
  if not argv:
    raise ValueError("nothing to run: give the program after `--`, e.g. "
                     "`-- -m experiments.train --config=configs/tiny.py`")
  port = port or free_port()
  base = dict(os.environ if env is None else env)
  lock = threading.Lock()
  procs, pumps = [], []
  for pid in range(processes):
    penv = process_env(base, pid, processes, port, devices_per_process)
    penv.update((process_env_extra or {}).get(pid, {}))
    proc = subprocess.Popen([sys.executable, *argv], env=penv, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    procs.append(proc)
    pumps.append(threading.Thread(target=_pump, args=(pid, proc.stdout, lock),
                                  daemon=True))
    pumps[-1].start()
  status, failed_at = 0, None
  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  previous = (signal.signal(signal.SIGTERM, forward)
              if threading.current_thread() is threading.main_thread()
              else None)
  try:
    while any(p.poll() is None for p in procs):
      for p in procs:
        rc = p.poll()
        if rc not in (None, 0) and status == 0:
          status, failed_at = rc, time.monotonic()
      if failed_at is not None and time.monotonic() - failed_at > grace_s:
        for p in procs:
          if p.poll() is None:
            p.kill()
      time.sleep(0.1)
  except KeyboardInterrupt:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    for p in procs:
      p.wait()
    raise
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  for p in procs:
    if status == 0 and p.returncode != 0:
      status = p.returncode
  for t in pumps:
    t.join(timeout=5)
  return status


def parse_process_env(specs: Sequence[str]) -> dict[int, dict[str, str]]:
  """`["PID:NAME=VALUE", ...]` -> {pid: {name: value}}.

  Raises:
    ValueError: a spec is not PID:NAME=VALUE.
  """
  out: dict[int, dict[str, str]] = {}
  for spec in specs:
    pid, sep, assignment = spec.partition(":")
    name, eq, value = assignment.partition("=")
    if not (sep and eq and name and pid.isdigit()):
      raise ValueError(f"--process_env={spec!r}: expected PID:NAME=VALUE, "
                       "e.g. 1:MOSAIC_FAULT=kill@update:5")
    out.setdefault(int(pid), {})[name] = value
  return out


def main(argv: Sequence[str]) -> None:
  # absl keeps what follows `--` as positional arguments.
  rest = list(argv[1:])
  status = launch(rest, _PROCESSES.value, _DEVICES.value, _PORT.value,
                  _GRACE.value,
                  process_env_extra=parse_process_env(_PROCESS_ENV.value))
  # A signal's negative status becomes the shell's 128 + signal.
  sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
  app.run(main)

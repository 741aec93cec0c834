"""Multi-host set-up: process-group initialisation, process roles, batches.

Every process runs the same program (JAX's multi-controller model). Each one
loads its own rows of the data, steps the environments of its own episodes,
and owns the devices attached to its host; jitted functions then run over the
global mesh. Writing files (metrics, checkpoints, reports) is for process 0
only, once every process's data has been gathered (`is_main_process`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from mosaic_jax import sharding as sharding_lib

# Environment variables that override the config's `distributed` section, so
# one config serves every process of a launch (only PROCESS_ID differs).
ENV_COORDINATOR = "COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "NUM_PROCESSES"
ENV_PROCESS_ID = "PROCESS_ID"


def _field(cfg: Mapping[str, Any] | Any, name: str, default):
  try:
    return cfg[name]
  except (KeyError, AttributeError):
    return default


def initialize_from_config(cfg: Mapping[str, Any] | Any = None) -> bool:
  """Joins the process group described by the config and the environment.

  Sources, in order of precedence: the environment variables
  COORDINATOR_ADDRESS, NUM_PROCESSES, PROCESS_ID; then the config fields
  `coordinator_address`, `num_processes`, `process_id`. With a coordinator
  and more than one process, calls `jax.distributed.initialize` with them.
  With `auto_detect` set (TPU pod slices, SLURM, Open MPI, GKE), calls it
  without arguments so that JAX reads the cluster's own description. Otherwise
  the run is single-process and nothing happens.

  Must run before anything touches a JAX device. CPU collectives are set to
  gloo, without which CPU processes cannot exchange data (the setting only
  affects the CPU backend, so it is harmless on TPU and GPU hosts).

  Args:
    cfg: the config's `distributed` section (mapping or ConfigDict), or None.

  Returns:
    True when a process group was joined (now or by an earlier call).

  Raises:
    ValueError: several processes but no coordinator address, or a process
      id outside [0, num_processes).
  """
  cfg = {} if cfg is None else cfg
  if jax.distributed.is_initialized():
    return True
  address = os.environ.get(ENV_COORDINATOR) or _field(cfg, "coordinator_address", "")
  num = int(os.environ.get(ENV_NUM_PROCESSES) or _field(cfg, "num_processes", 1))
  pid = int(os.environ.get(ENV_PROCESS_ID) or _field(cfg, "process_id", 0))
  auto = bool(_field(cfg, "auto_detect", False))
  if num > 1 or address:
    if not address:
      raise ValueError(
          f"num_processes={num} needs a coordinator: set "
          f"config.distributed.coordinator_address (host:port of process 0) "
          f"or ${ENV_COORDINATOR}")
    if not 0 <= pid < num:
      raise ValueError(f"process_id {pid} is outside [0, {num}): set "
                       f"config.distributed.process_id or ${ENV_PROCESS_ID}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=num,
                               process_id=pid)
    return True
  if auto:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize()
    return True
  return False


def is_main_process() -> bool:
  """True on the one process that writes files and logs (process 0)."""
  return jax.process_index() == 0


def host_local_batch_to_global(local_batch: Any, mesh: Mesh,
                               rules=sharding_lib.DEFAULT_RULES) -> Any:
  """Assembles each process's own rows into global arrays sharded on `mesh`.

  Every process passes a pytree of [B_local, ...] arrays (the same structure
  and B_local everywhere); the result holds [B_local * num_processes, ...]
  global arrays whose batch dim is sharded by the `batch` rule. A process's
  rows land in the batch slots of its own devices; on a mesh from
  `sharding.make_mesh` (process-major devices) that is process order, so
  process p holds global rows [p * B_local, (p + 1) * B_local).

  Raises:
    ValueError: the global batch cannot be split over the mesh's batch axes
      so that each process holds whole rows of its own (raised by JAX).
  """
  def one(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    sharding = sharding_lib.batch_sharding(mesh, global_shape, rules)
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  return jax.tree.map(one, local_batch)


def allgather_json(value: Any) -> list[Any]:
  """Every process's JSON-able `value`, in process order (`[value]` on one
  process).

  Host-side data (episode metadata, counts) travel as UTF-8 JSON in a
  padded uint8 array through `multihost_utils.process_allgather`: two
  collectives, the lengths and then the bytes. Every process must call it.
  """
  if jax.process_count() == 1:
    return [value]
  # pylint: disable-next=import-outside-toplevel
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(
      np.asarray([data.size], np.int64))).reshape(-1)
  padded = np.zeros((int(sizes.max()),), np.uint8)
  padded[:data.size] = data
  table = np.asarray(multihost_utils.process_allgather(padded)).reshape(
      len(sizes), -1)
  return [json.loads(table[p, :n].tobytes().decode("utf-8"))
          for p, n in enumerate(sizes)]


def local_rows(x: Any) -> Any:
  """This process's rows of a pytree of global host arrays `[N, ...]` (the
  same on every process): rows [p * N/P, (p + 1) * N/P), the rows a
  process-major mesh places on its devices (`host_local_batch_to_global`).

  Raises:
    ValueError: N is not a multiple of the process count.
  """
  count, p = jax.process_count(), jax.process_index()
  def one(a):
    a = np.asarray(a)
    if a.shape[0] % count:
      raise ValueError(f"{a.shape[0]} rows do not split evenly over {count} "
                       "processes")
    share = a.shape[0] // count
    return a[p * share:(p + 1) * share]
  return jax.tree.map(one, x)

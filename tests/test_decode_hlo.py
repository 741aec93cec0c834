"""The decode loop reads each weight and the K/V window once per step.

Inspects the compiled HLO of the sampler's `while_loop` body
(experiments/decode_hlo.py): no instruction in it may copy a buffer as large
as the smallest per-layer weight matrix (a layer scan's dynamic-slice of the
stacked weights, a transposed K/V window), and XLA's cost analysis of one
step must stay near weights + window read once.
"""
import functools

import jax.numpy as jnp
import pytest

from experiments import decode_hlo
from mosaic_jax.models import decoder

CFG = decode_hlo.SMALL_QWEN3
# Batch 2, 16 new tokens into 256 slots: a 128-slot window. A layer's K (or V)
# window, [2, 2, 128, 32] f32 = 64 KiB, and each matrix (>= 32 KiB) are
# above the copy threshold; the [2, 2048] logits (16 KiB) are below it.
BATCH, CAPACITY, NEW = 2, 256, 16


@functools.lru_cache(maxsize=None)
def _model():
  return decoder.init_model(CFG)


@functools.lru_cache(maxsize=None)
def _audit(layers: str) -> dict:
  hlo = decode_hlo.decode_hlo(_model(), BATCH, CAPACITY, NEW, layers)
  return decode_hlo.audit(hlo, decode_hlo.min_matrix_bytes(CFG))


def test_unrolled_decode_body_has_no_weight_or_window_copies():
  found = _audit("unrolled")
  assert found["copies"] == [], (
      "weight- or window-sized copies came back into the decode loop body: "
      f"{found['copies']}")


def test_the_audit_sees_the_scan_paths_copies():
  # The check above can fail: the layer scan still slices every stacked
  # weight per layer per token (7 matrices a layer) and copies each layer's
  # K and V window into a transposed buffer.
  found = _audit("scan")
  weights = [c for c in found["copies"] if "dynamic_slice" in c["what"]]
  assert sum(c["per_step"] for c in weights) >= 6 * CFG.num_layers
  assert found["copies_per_step"] >= 8 * CFG.num_layers
  assert found["bytes_per_step"] > 2 * _audit("unrolled")["bytes_per_step"]


def test_step_bytes_accessed_near_weights_plus_window():
  # Floor: every parameter once plus every layer's 128-slot K and V window.
  # XLA charges the token-embedding gather the whole [V, D] table (it reads
  # B rows), so the expected figure adds one table; the 1.25 factor leaves
  # room for activations, norms and logits ([B, V] written and read a few
  # times: ~3% here). The scan path's copies read and write each weight
  # twice more, > 2x this figure (the audit's walk above).
  window = 128
  floor = decode_hlo.floor_bytes(CFG, BATCH, window)
  table = CFG.vocab_size * CFG.hidden_size * jnp.dtype(CFG.jnp_param_dtype).itemsize
  measured = decode_hlo.step_cost_bytes(_model(), BATCH, CAPACITY, NEW)
  assert floor <= measured <= 1.25 * (floor + table), (measured, floor, table)
  walked = _audit("unrolled")["bytes_per_step"]
  assert walked == pytest.approx(measured, rel=0.1)

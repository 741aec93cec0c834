"""What both methods feed the training steps: `SFTBatch`, `PGBatch`, padding.

Shapes never change between steps (a new shape would compile the jitted step
again): a batch is always `[rows, length]`, and rows beyond the examples hold
one attended pad token and no loss (`padded_sft_batch`). `to_global` places
a batch on the mesh.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax import distributed, sharding

Array = jax.Array


class SFTBatch(NamedTuple):
  """Supervised examples.

  Attributes:
    tokens: `[B, T]` int32 token ids (right-padded).
    loss_mask: `[B, T]` 1 on the target (assistant) tokens.
    attention_mask: `[B, T]` 1 on real tokens, 0 on padding.
  """
  tokens: Array
  loss_mask: Array
  attention_mask: Array


class PGBatch(NamedTuple):
  """Sampled trajectories with their advantages.

  Attributes:
    tokens: `[B, T]` int32 token ids.
    loss_mask: `[B, T]` 1 on model-generated tokens (not prompt, tool output
      or padding).
    attention_mask: `[B, T]` 1 on real tokens, 0 on padding.
    advantages: `[B]` float32 sequence advantages.
    old_logp: `[B, T]` token-aligned log π_old (from the sampler).
    ref_logp: `[B, T]` token-aligned log π_ref
      (`train.steps.reference_logprobs`), or None when no KL is computed.
  """
  tokens: Array
  loss_mask: Array
  attention_mask: Array
  advantages: Array
  old_logp: Array
  ref_logp: Array | None = None


def padded_sft_batch(examples: Sequence[tuple[np.ndarray, np.ndarray,
                                              np.ndarray]],
                     rows: int, length: int, pad_id: int) -> SFTBatch:
  """Examples as a numpy `SFTBatch` of shape `[rows, length]`.

  Args:
    examples: at most `rows` (tokens, loss_mask, attention_mask) triples,
      each `[t]` with t <= length; example i fills row i from the left.
    rows, length: the batch shape.
    pad_id: the token of every position no example fills.

  Returns:
    The batch; rows without an example are one attended pad token with no
    loss, so a batch with dropped examples keeps its shape.
  """
  tokens = np.full((rows, length), pad_id, np.int32)
  loss_mask = np.zeros((rows, length), np.int32)
  attention = np.zeros((rows, length), np.int32)
  attention[:, 0] = 1
  for i, (ids, mask, attend) in enumerate(examples):
    tokens[i, :len(ids)] = ids
    loss_mask[i, :len(mask)] = mask
    attention[i, :len(attend)] = attend
  return SFTBatch(tokens, loss_mask, attention)


def to_global(x: Any, mesh: jax.sharding.Mesh) -> Any:
  """This process's rows as global arrays sharded over the mesh's batch."""
  if jax.process_count() > 1:
    return distributed.host_local_batch_to_global(x, mesh)
  return sharding.shard_batch(jax.tree.map(jnp.asarray, x), mesh)


def place_global(x: Any, mesh: jax.sharding.Mesh) -> Any:
  """Global host rows (the same on every process) as arrays sharded over the
  mesh's batch: each process contributes its `distributed.local_rows`."""
  if jax.process_count() > 1:
    x = distributed.local_rows(x)
  return to_global(x, mesh)

"""experiments/op_profile.py: HLO instructions get the right category, and a
traced call's op time lands in them."""
import jax
import jax.numpy as jnp

from experiments import op_profile


def _fn(a, b):
  return jnp.tanh(a @ b).T + 1.0


def test_categories_and_profile():
  a = jnp.ones((64, 128), jnp.float32)
  b = jnp.ones((128, 32), jnp.float32)
  jitted = jax.jit(_fn)
  kinds = op_profile.categories(jitted.lower(a, b).compile().as_text())
  assert "dot" in kinds.values(), kinds
  out = op_profile.profile(jitted, a, b, runs=2)
  assert out["by_category_s"].get("dot", 0) > 0, out
  assert out["op_cpu_s"] >= out["by_category_s"]["dot"]
  names = [name for rows in out["top_ops"].values() for name, _, _ in rows]
  assert names and all(kinds[n] in out["top_ops"] for n in names)
  assert all(calls == 1 for rows in out["top_ops"].values()
             for _, _, calls in rows)  # per run, averaged over 2


def test_categories_of_hand_written_hlo():
  text = """HloModule m

%fused_dot (p0: f32[4,4], p1: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_copy (p0: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  ROOT %transpose.1 = f32[4,4]{0,1} transpose(%p0), dimensions={1,0}
}

%fused_add (p0: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  ROOT %add.1 = f32[4,4]{1,0} add(%p0, %p0)
}

ENTRY %main (a: f32[4,4]) -> f32[4,4] {
  %a = f32[4,4]{1,0} parameter(0)
  %f1 = f32[4,4]{1,0} fusion(%a, %a), kind=kCustom, calls=%fused_dot
  %f2 = f32[4,4]{0,1} fusion(%f1), kind=kLoop, calls=%fused_copy
  ROOT %f3 = f32[4,4]{1,0} fusion(%f2), kind=kLoop, calls=%fused_add
}
"""
  kinds = op_profile.categories(text)
  assert (kinds["f1"], kinds["f2"], kinds["f3"]) == ("dot", "copy", "elementwise")

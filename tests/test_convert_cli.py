"""`python -m experiments.convert`: HF -> orbax -> HF keeps the logits exactly."""
import os
import subprocess
import sys

import numpy as np

from tests import hf_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _convert(src, dst, to):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  subprocess.run([sys.executable, "-m", "experiments.convert", f"--src={src}",
                  f"--dst={dst}", f"--to={to}"], check=True, cwd=ROOT, env=env,
                 timeout=300, capture_output=True)


def test_hf_to_orbax_to_hf(tmp_path):
  hf = hf_models.make_hf_model("phi3", str(tmp_path / "hf"), partial_rotary_factor=0.5)
  _convert(tmp_path / "hf", tmp_path / "orbax", "orbax")
  assert os.path.isdir(tmp_path / "orbax" / "params")
  _convert(tmp_path / "orbax", tmp_path / "back", "hf")
  # HF's decoding defaults and stop ids travel along both ways.
  for step in ("hf", "orbax", "back"):
    assert os.path.isfile(tmp_path / step / "generation_config.json"), step
  back = type(hf).from_pretrained(str(tmp_path / "back"), attn_implementation="eager")
  for key, value in hf.state_dict().items():
    np.testing.assert_array_equal(back.state_dict()[key].numpy(), value.numpy(), err_msg=key)

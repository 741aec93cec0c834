"""Model configs of the real families and the tiny default.

Sizes from each checkpoint's config.json (shared/REFERENCE.md). The real
presets describe the architecture only; weights always come from
`from_pretrained(path)`, whose config.json is the ground truth.
"""
import pathlib

from mosaic_jax.models.config import ModelConfig, RopeConfig

QWEN25_7B = ModelConfig(
    family="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
    num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
    rope=RopeConfig(theta=1e6), qkv_bias=True, norm_eps=1e-6,
    max_position_embeddings=32768, param_dtype="bfloat16", dtype="bfloat16")

QWEN3_4B_THINKING = ModelConfig(
    family="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
    num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
    rope=RopeConfig(theta=5e6), qk_norm=True, tie_embeddings=True, norm_eps=1e-6,
    max_position_embeddings=262144, param_dtype="bfloat16", dtype="bfloat16")

PHI4 = ModelConfig(
    family="phi3", vocab_size=100352, hidden_size=5120, intermediate_size=17920,
    num_layers=40, num_heads=40, num_kv_heads=10, head_dim=128,
    rope=RopeConfig(theta=2.5e5), norm_eps=1e-5, max_position_embeddings=16384,
    param_dtype="bfloat16", dtype="bfloat16")

# SmolLM2-135M(-Instruct), a LlamaForCausalLM; `python -m experiments.fetch
# smollm2-135m-instruct` builds its HF directory (docs/fetching.md).
SMOLLM2_135M = ModelConfig(
    family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
    num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
    rope=RopeConfig(theta=1e5), tie_embeddings=True, norm_eps=1e-5,
    max_position_embeddings=8192, param_dtype="bfloat16", dtype="bfloat16")

# A Qwen3-architecture model that trains on a 2-core CPU in minutes. Its
# vocabulary is the project's own BPE tokenizer (mosaic_jax/assets/tiny_tokenizer).
TINY = ModelConfig(
    family="qwen3", vocab_size=2048, hidden_size=128, intermediate_size=384,
    num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
    rope=RopeConfig(theta=1e4), qk_norm=True, tie_embeddings=True, norm_eps=1e-6,
    max_position_embeddings=4096)

# The tiny base checkpoint (HF safetensors + tokenizer) that configs/tiny.py
# starts from, built by experiments/build_tiny_base.py (configs/tiny_base.py).
TINY_BASE_DIR = pathlib.Path(__file__).parent.parent / "assets" / "tiny_base"

PRESETS = {"qwen25_7b": QWEN25_7B, "qwen3_4b_thinking": QWEN3_4B_THINKING,
           "phi4": PHI4, "smollm2_135m": SMOLLM2_135M, "tiny": TINY}

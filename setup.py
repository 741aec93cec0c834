"""mosaic-jax: safe tool-using LM agents over many steps, in JAX/Flax."""
import setuptools

# Exact pins: JAX, Flax NNX, orbax and grain APIs move fast, and CI must see
# the versions the code was proven against.
JAX_VERSION = "0.10.2"
INSTALL_REQUIRES = [
    f"jax=={JAX_VERSION}",
    f"jaxlib=={JAX_VERSION}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "transformers==5.23.0",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "Jinja2==3.1.6",
    "tensorboardX==2.6.5",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "psutil==7.2.2",
    # Benchmark record schemas (mosaic_jax/benchmarks/; agentdojo needs it
    # too).
    "pydantic==2.14.4",
    # GGUF reading and dequantization (experiments.fetch, models.gguf_import);
    # transformers' GGUF tokenizer conversion also needs it. Its own loader of
    # GGUF weights (which would need accelerate) is not used.
    "gguf==0.19.0",
]

# Accelerator extras: JAX's own extras at the pinned jax, so the PJRT plugin
# (jax-cuda12-plugin 0.10.2 with its CUDA wheels; libtpu 0.0.42.*) always
# matches jaxlib. Both resolve with `pip install --dry-run` from PyPI.
EXTRAS = {
    "cuda": [f"jax[cuda12]=={JAX_VERSION}"],
    "tpu": [f"jax[tpu]=={JAX_VERSION}"],
    "agentdojo": ["agentdojo==0.1.35"],
    # Viewers of what a run logs (train.metrics): `tensorboard --logdir
    # WORKDIR` over the event files tensorboardX writes, and Weights & Biases
    # (logging.backends=("jsonl", "tensorboard", "wandb"); offline mode
    # needs no network).
    "tensorboard": ["tensorboard==2.21.0"],
    "wandb": ["wandb==0.30.0"],
    "test": [
        # Exactly this version: it installs from a local CPU wheel; a looser
        # spec pulls several GB of CUDA packages.
        "torch==2.13.0",
        "agentdojo==0.1.35",
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "hypothesis==6.170.15",
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
    ],
}

setuptools.setup(
    name="mosaic-jax",
    version="0.1.0",
    description="MOSAIC and FATE post-training of tool-using LM agents in JAX/Flax",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["mosaic_jax", "mosaic_jax.*"]),
    package_data={"mosaic_jax": ["assets/**/*", "agent/templates/*.jinja"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)

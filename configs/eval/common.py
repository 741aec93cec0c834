"""Fields every eval config shares (`python -m experiments.evaluate`).

See `mosaic_jax/eval/harness.py` for what each benchmark does with them and
docs/evaluation.md for commands and measured numbers.
"""
import ml_collections


def eval_config(benchmarks: str, name: str) -> ml_collections.ConfigDict:
  """The defaults; `benchmarks` is a comma list of `harness.BENCHMARKS`."""
  c = ml_collections.ConfigDict()
  c.benchmarks = benchmarks
  # What is evaluated: a scripted policy name (expert, comply_all,
  # follow_injection, over_refuse, leak, lazy, malformed) or a checkpoint
  # directory. `checkpoint`, when set, wins over `policy`.
  c.policy = "expert"
  c.checkpoint = ""
  c.name = ""              # run name in reports (default: policy/dir name)
  c.model_preset = ""      # architecture of a training checkpoint that has
                           # no config.json beside it (presets.PRESETS)
  c.tokenizer = ""         # default: beside the weights, else the tiny one
  c.dtype = ""             # parameter dtype; empty: the checkpoint's own
  # Outputs go to <output_dir>/<benchmark>/; rerunning the same command
  # resumes from the episodes already recorded there.
  c.output_dir = f"/tmp/mosaic_eval/{name}"
  c.max_tasks = 0          # per stratum (harness docstring); 0 = all
  c.batch = 16             # tasks per chunk (one rollout / one sampled batch)
  c.progress = True        # tqdm bars (only shown on a TTY)
  # Bootstrap intervals of every rate.
  c.n_bootstrap = 1000
  c.bootstrap_seed = 0
  c.confidence = 0.95
  # Data layer (docs/data.md): TFDS datasets under data_dir, benchmark
  # files under manual_dir/<name>/ (empty: TFDS's defaults).
  c.data_dir = ""
  c.manual_dir = ""
  # Built-in suites: the split (train, validation, test, test_ood; settings
  # are chosen on validation, claims made on test and test_ood), the
  # scripted floors evaluated on the same tasks and printed beside the
  # policy, and the sampled evaluation for claims: a model also plays
  # `claim_samples` episodes per task (0: none) with `claim_strategy` at
  # `claim_temperature` (the training temperature), reported beside the
  # greedy run with intervals clustered over tasks (docs/evaluation.md).
  c.split = "test"
  c.baselines = ("lazy", "refuse_all")
  c.claim_samples = 4
  c.claim_strategy = "temperature"
  c.claim_temperature = 1.0
  # AgentDojo (package data): comma lists; empty suites = all four.
  c.suites = "workspace,travel,banking,slack"
  c.attack = "important_instructions"   # comma list; empty = no attack
  c.benign = True                        # also run without injections
  c.version = "v1.2.2"
  c.user_tasks = ""                      # subset of user task ids
  c.injection_tasks = ""                 # subset of injection task ids
  # AgentHarm: which files (harmful, benign), the split and the refusal
  # judge: "detector" (deterministic) or a model directory (LLM judge).
  c.agentharm_configs = "harmful,benign"
  c.agentharm_split = "test_public"
  c.judge = "detector"
  # ATBench: atbench (1,000 trajectories) or atbench500; ask the judge for
  # the taxonomy fields too.
  c.atbench_config = "atbench"
  c.fine_grained = False
  # Decoding of model policies (rollout.RolloutConfig fields); single-turn
  # benchmarks use max_tokens_per_turn, strategy and stop_strings. Greedy:
  # evaluation measures the policy's mode. AgentDojo's travel user_task_19
  # takes 18 tool calls, so 20 turns leave every user task solvable.
  c.rollout = ml_collections.ConfigDict(dict(
      max_turns=20, max_tokens_per_turn=512, max_total_length=8192,
      strategy="greedy", temperature=1.0, top_k=0, top_p=1.0, seed=0,
      stop_strings=(), min_bucket=16))
  return c

"""The shipped configs as users compose them, shrunk to a few steps on the CPU by one last overlay.

A run is the shipped ``-c`` chain as the README and the configs' headers write it, then one generated overlay
that changes only sizes and periods: every periodic callback of the chain (checkpoints, weight monitor, sample
logger) and validation fire every ``PERIOD`` optimizer steps, the run lasts ``2 × PERIOD`` steps (each period
passed twice), batches are a few prompts, and what the CPU cannot have (GPUs, vLLM, model and data downloads) is
replaced by the built-in policy, task (a built-in task is kept) and HF engine. Everything else — strategy, loss,
KL, precision, grader, health options, callbacks — is the shipped configs'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from real_lightning.data.sources import is_builtin_task
from tests.pipeline.launch import REPO

CONFIGS = REPO / "configs"
PERIOD = 2
PERIODIC_OPTIONS = ("every_n_steps", "every_n_train_steps")

QUICKSTART = ["quickstart.yaml"]
REPLICATION = ["replication.yaml"]
PAPER = ["paper/real_r1_distill_qwen_1.5b.yaml"]
VLLM = [*QUICKSTART, "vllm.yaml"]  # run by `tox -e vllm` (tests/pipeline/test_fsdp_vllm.py)
VLLM_SERVER = [*QUICKSTART, "vllm_server.yaml"]  # `tox -e vllm`, local servers (tests/rollout/test_vllm_server.py)
EVAL = ["paper/eval.yaml"]  # `real-lightning validate`

# (id, the -c chain, whether the chain shards with FSDP2)
RUNS: list[tuple[str, list[str]]] = [
    ("quickstart-ddp", QUICKSTART),
    ("quickstart-fsdp", [*QUICKSTART, "fsdp.yaml"]),
    *[(f"quickstart+{b}-ddp", [*QUICKSTART, f"baselines/{b}.yaml"]) for b in ("grpo", "dapo", "gspo", "real_bce")],
    ("quickstart+real_product-fsdp", [*QUICKSTART, "baselines/real_product.yaml", "fsdp.yaml"]),
    ("quickstart+async-ddp", [*QUICKSTART, "async.yaml"]),  # a rollout producer process per rank
    ("quickstart+async-fsdp", [*QUICKSTART, "async.yaml", "fsdp.yaml"]),
    ("quickstart+lora-ddp", [*QUICKSTART, "lora.yaml"]),  # adapters only; rank 0 exports the merged policy
    ("quickstart+lora-fsdp", [*QUICKSTART, "lora.yaml", "fsdp.yaml"]),  # sharded adapters, gathered to merge
    ("quickstart+async+lora-ddp", [*QUICKSTART, "async.yaml", "lora.yaml"]),  # the producer gets merged weights
    ("replication-ddp", REPLICATION),
    ("replication-fsdp", [*REPLICATION, "fsdp.yaml"]),
    ("staleness-ddp", ["staleness.yaml"]),  # countdown, behaviour log-probs as π_old, MechanismMonitor
    ("paper-fsdp", PAPER),
    *[(f"paper+{o}-fsdp", [*PAPER, f"paper/{o}.yaml"]) for o in ("grpo", "dapo", "gspo", "real_bce")],
    ("paper+7b-fsdp", [*PAPER, "paper/gspo.yaml", "paper/r1_distill_qwen_7b.yaml"]),
]


def composed(chain: list[str]) -> dict[str, Any]:
    """The chain's YAML files merged key by key (later files win, lists replaced), for reading its callbacks."""

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for key, value in b.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    config: dict[str, Any] = {}
    for name in chain:
        config = merge(config, yaml.safe_load((CONFIGS / name).read_text()) or {})
    return config


def uses_fsdp(chain: list[str]) -> bool:
    strategy = composed(chain).get("trainer", {}).get("strategy")
    return isinstance(strategy, dict) and strategy.get("class_path", "").endswith("FSDP2Strategy")


def shrink_overlay(chain: list[str], root: Path, extra_callbacks: list[dict] = (), keep_vllm: bool = False) -> Path:
    """The overlay that makes ``chain`` a ``2 × PERIOD``-step CPU run writing under ``root``.

    The engine becomes the HF engine, unless ``keep_vllm`` and the chain samples with vLLM: then it stays a
    ``VLLMEngine`` (on the CPU: float32, eager, short responses) or a ``VLLMServerEngine`` (short responses; the
    servers' URLs come on the command line)."""
    config = composed(chain)
    callbacks = []
    for callback in config.get("trainer", {}).get("callbacks", []):
        args = dict(callback.get("init_args", {}))
        for option in PERIODIC_OPTIONS:
            if option in args:
                args[option] = PERIOD
        callbacks.append({**callback, "init_args": args})
    engine = config["data"]["engine"]
    kept = ("temperature", "top_p", "top_k", "behaviour_logprobs")
    sampling = {k: v for k, v in engine.get("init_args", {}).items() if k in kept}
    val_names = list(config["data"].get("val", {}) or {"held_out": None})
    train_options = config["data"]["train"].get("options", {})
    source = config["data"]["train"].get("source", "")
    task = _builtin_task(source)
    # the chain's prompt suffix belongs to its own dataset (the paper recipe's instruction would make every
    # arithmetic prompt longer than the tiny policy's positions): kept only with the chain's own task
    prompts = {} if task == source else {"suffix": ""}
    overlay = {
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 2 * PERIOD,
            "val_check_interval": PERIOD,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "default_root_dir": str(root),
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root), "name": "run"},
            },
            "callbacks": [*callbacks, *extra_callbacks],
        },
        "model": {"pretrained": "builtin:tiny", "export_dir": str(root / "hf")},
        "data": {
            "train": {"source": task, "split": "train", "limit": 256, "options": train_options},
            "val": {
                name: {"source": task, "split": "test", "limit": 6, "options": train_options} for name in val_names
            },
            "engine": _small_engine(engine, sampling, keep_vllm),
            "schedule": _small_schedule(config["data"].get("schedule", {"prompts_per_rollout": 8})),
            "validation": {"samples": max(config.get("pass_at_k", {}).get("ks", [1])), "prompts_per_batch": 4},
            "prompts": prompts,
        },
    }
    if config.get("model", {}).get("fsdp", {}).get("param_dtype") == "bfloat16":
        overlay["model"]["fsdp"] = {"param_dtype": "bfloat16"}  # kept: bf16 compute runs on CPU too
    path = root / "shrink.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


VLLM_ENGINE = "real_lightning.rollout.vllm.VLLMEngine"
SERVER_ENGINE = "real_lightning.rollout.server.VLLMServerEngine"


def uses_vllm(chain: list[str]) -> bool:
    return composed(chain)["data"]["engine"].get("class_path") == VLLM_ENGINE


def _small_engine(engine: dict[str, Any], sampling: dict[str, Any], keep_vllm: bool) -> dict[str, Any]:
    if keep_vllm and engine.get("class_path") == VLLM_ENGINE:
        options = {"max_new_tokens": 8, "dtype": "float32", "enforce_eager": True, "max_model_len": 64}
        return {"class_path": VLLM_ENGINE, "init_args": {**sampling, **options}}
    if keep_vllm and engine.get("class_path") == SERVER_ENGINE:
        options = {k: v for k, v in engine["init_args"].items() if k not in ("max_new_tokens", "urls")}
        return {"class_path": SERVER_ENGINE, "init_args": {**options, "max_new_tokens": 8}}
    return {"class_path": "real_lightning.rollout.HFEngine", "init_args": {"max_new_tokens": 8, **sampling}}


def _builtin_task(source: str) -> str:
    """The chain's own task when it is a built-in one (countdown keeps its reward valid), else arithmetic (for a
    hub dataset, a file or a shipped evaluation set)."""
    return source if is_builtin_task(source) else "builtin:arithmetic"


def _small_schedule(schedule: dict[str, Any]) -> dict[str, Any]:
    """8 prompts × 4 rollouts per rollout batch, keeping the shipped number of optimizer steps per batch (≤ 4)."""
    steps = schedule["prompts_per_rollout"] // schedule.get("prompts_per_minibatch", schedule["prompts_per_rollout"])
    steps = min(steps, 4)
    return {"prompts_per_rollout": 8, "rollouts_per_prompt": 4, "prompts_per_minibatch": 8 // steps}


def fit_args(
    chain: list[str], root: Path, extra_callbacks: list[dict] = (), command: str = "fit", keep_vllm: bool = False
) -> list[str]:
    """``real-lightning fit`` (or ``command``) arguments of the shrunk chain on 2 ranks (the chain's strategy, else
    DDP)."""
    args = [command]
    for name in chain:
        args += ["-c", str(CONFIGS / name)]
    args += ["-c", str(shrink_overlay(chain, root, extra_callbacks, keep_vllm)), "--trainer.devices", "2"]
    if not uses_fsdp(chain):
        args += ["--trainer.strategy", "ddp"]
    return args

"""The README's multi-process commands, as written, for 24 steps: Lightning's own launcher (``--trainer.devices
2``: rank 1 is a child process), and torchrun as 2 nodes × 1 process with the rendezvous on localhost. Each runs
in a session of its own under a timeout that kills the whole process group and says which command stalled."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline.launch import REPO, free_port, kill_group
from tests.pipeline.shipped_configs import PAPER, shrink_overlay

pytestmark = pytest.mark.distributed

README = (REPO / "README.md").read_text()
STEPS = 24
SHORT = ["--trainer.max_steps", str(STEPS), "--trainer.enable_progress_bar", "false"]


def readme_commands(prefix: str) -> list[str]:
    """The README's shell commands (backslash continuations joined) that start with ``prefix``."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line.startswith(prefix)]


def run_command(commands: list[list[str]], cwd: Path, timeout_s: float) -> list[str]:
    """Run ``commands`` together (each in its own session) in ``cwd``; their outputs. A command that fails, or
    still runs at the timeout (with its whole process group: ranks blocked in a collective ignore SIGTERM), fails
    the test with the end of its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # real-lightning, torchrun
    logs = [cwd / f"command{i}.log" for i in range(len(commands))]
    procs = []
    for command, log in zip(commands, logs, strict=True):
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    stalled = []
    for command, proc in zip(commands, procs, strict=True):
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stalled.append(shlex.join(command))
        kill_group(proc)
    outputs = [log.read_text(errors="replace") for log in logs]
    for command, proc, output in zip(commands, procs, outputs, strict=True):
        if shlex.join(command) in stalled or proc.returncode != 0:
            state = f"stalled after {timeout_s:.0f} s" if shlex.join(command) in stalled else f"exit {proc.returncode}"
            raise AssertionError(f"{shlex.join(command)}: {state}\n" + "\n".join(output.splitlines()[-40:]))
    return outputs


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_readme_two_process_commands_run_past_every_period(tmp_path, strategy) -> None:
    """``real-lightning fit -c configs/quickstart.yaml [-c configs/fsdp.yaml] --trainer.devices 2 ...`` from the
    README, for 24 steps (the weight monitor's period is 10: passed twice), in a fresh folder."""
    fsdp = "-c configs/fsdp.yaml"
    (command,) = [
        c
        for c in readme_commands("real-lightning fit -c configs/quickstart.yaml")
        if "--trainer.devices 2" in c and (fsdp in c) == (strategy == "fsdp")
    ]
    args = [a if not a.startswith("configs/") else str(REPO / a) for a in shlex.split(command)]
    outputs = run_command([[*args, *SHORT]], tmp_path, timeout_s=420)
    assert re.search(r"\[held_out\] Pass@1 before: [0-9.]+, after: [0-9.]+", outputs[0]), outputs[0][-3000:]
    records = sorted(p.name for p in tmp_path.glob("runs/quickstart/version_0/gradient_weights/*.parquet"))
    assert records == [f"step_{s:07d}_rank{r}.parquet" for s in (10, 20) for r in (0, 1)], records


def test_the_readme_torchrun_command_runs_as_two_nodes(tmp_path) -> None:
    """The README's multi-node torchrun command as 2 nodes × 1 process on this machine (the rendezvous on
    localhost), with the paper recipe shrunk to the CPU (``tests/pipeline/shipped_configs.py``), for 24 steps."""
    (command,) = readme_commands("torchrun --nnodes 2")
    port = str(free_port())
    command = command.replace("--nproc-per-node 8", "--nproc-per-node 1").replace(
        "$HEAD_NODE:29500", f"127.0.0.1:{port}"
    )
    command = command.replace("--trainer.devices 8", "--trainer.devices 1")
    args = [a if not a.startswith("configs/") else str(REPO / a) for a in shlex.split(command)]
    args[1:1] = ["--rdzv-id", f"readme-{port}"]
    args += ["-c", str(shrink_overlay(PAPER, tmp_path)), *SHORT, "--trainer.val_check_interval", "12"]
    outputs = run_command([args, args], tmp_path, timeout_s=420)  # two "nodes"
    joined = "\n".join(outputs)
    assert re.search(r"\[aime24\] Pass@1 before: [0-9.]+, after: [0-9.]+", joined), joined[-3000:]
    assert (tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt").is_dir()  # FSDP2: a distributed checkpoint

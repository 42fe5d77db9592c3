"""experiments/staleness.py: the arms, the pilot's lr matching, the gates and the grid on a tiny version of the
regime (the shipped policy, a reward with contrast), and the tables read back from the summary."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import staleness, staleness_report

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--data.schedule.prompts_per_rollout", "4",
    "--data.schedule.rollouts_per_prompt", "4",
    "--data.schedule.prompts_per_minibatch", "2",
    "--data.engine.init_args.max_new_tokens", "8",
    "--data.verifier.reward", "tests.rewards_for_tests:first_char_even",
    "--data.val.held_out.limit", "8",
    "--data.validation.prompts_per_batch", "8",
    "--trainer.val_check_interval", "2",
]  # fmt: skip


def test_arms_are_the_issues_losses() -> None:
    assert staleness.ARMS["grpo_dual_clip"] == ("grpo", {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": 3.0})
    assert staleness.ARMS["dapo"][1] == {"clip_low": 0.2, "clip_high": 0.28}
    assert staleness.ARMS["real_s0"] == ("real_s0", {"tau": 0.5}) and staleness.ARMS["real"][1] == {"tau": 0.5}
    args = staleness.Run("grid", "grpo_dual_clip", 1e-4, 4, 2, 300).arguments(Path("out"), "policy")
    assert args[args.index("--data.schedule.max_staleness") + 1] == "4"
    assert json.loads(args[args.index("--model.loss_kwargs") + 1])["dual_clip"] == 3.0


def test_the_rule_reads_the_mean_of_the_last_three_validations() -> None:
    record = {"curves": {"val/held_out/pass@1": [[0, 0.1], [25, 0.2], [50, 0.3], [75, 0.4], [100, 0.8]]}}
    assert math.isclose(staleness_report.score(record), 0.5)
    assert math.isnan(staleness_report.score({"curves": {}}))


def test_pilot_and_gates_on_a_tiny_regime(tmp_path) -> None:
    """The pilot and the gates on the shipped policy: REAL and GRPO, one lr each, 4-step runs, S_high 2 (a
    producer process). The pilot writes the lr choice with the KL ratio; the gates are printed and saved whatever
    they say, from a GRPO run that did train on stale batches."""
    command = [sys.executable, "-m", "experiments.staleness", "--out", str(tmp_path), "--policy", "builtin:tiny"]
    command += ["--arms", "real", "grpo", "--stages", "pilot", "gates", "--pilot-steps", "4", "--lrs", "1e-3"]
    command += ["--real-lrs", "1e-3", "--high-staleness", "2", "--", *SMALL]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pilot = json.loads((tmp_path / "pilot.json").read_text())
    assert pilot["real"]["ratio"] == 1.0 and pilot["grpo"]["lr"] == 1e-3 and pilot["grpo"]["ppo_kl"] > 0
    assert pilot["real"]["lr"] == 1e-3 and set(pilot["real"]["pass_at_1_change"]) == {"0.001"}
    gates = json.loads((tmp_path / "gates.json").read_text())
    assert set(gates) == {"G1", "G2", "G3"} and all(isinstance(g["pass"], bool) for g in gates.values())
    assert "G3: " in result.stdout and gates["G3"]["staleness"] == 2
    stale = json.loads(next((tmp_path / "gates" / "grpo").glob("*-S2-seed0/done.json")).read_text())
    assert max(v for _, v in stale["curves"]["rollout/staleness_batches_mean"]) == 1.0  # 2 batches of 2 steps
    assert "mechanism/pass_at_n" in stale["curves"] and not (tmp_path / "grid").exists()


def test_summary_and_tables_pair_the_seeds(tmp_path) -> None:
    """Finished runs' records are collected into one summary; the table gives mean ± sd and each seed."""
    for arm, s, seed, last in [("real", 0, 0, 0.4), ("real", 0, 1, 0.6), ("grpo", 4, 0, 0.2), ("grpo", 4, 1, 0.3)]:
        folder = staleness.Run("grid", arm, 1e-4, s, seed, 10).folder(tmp_path)
        folder.mkdir(parents=True)
        curve = [[0, 0.1], [5, last], [10, last], [15, last]]
        (folder / "done.json").write_text(json.dumps({"steps": 10, "curves": {"val/held_out/pass@1": curve}}))
    staleness.collect(tmp_path, tmp_path / "summary.json")
    table = staleness_report.grid_table(json.loads((tmp_path / "summary.json").read_text()))
    assert "| real | 0 | 0.500 ± 0.141 | 0: 0.400, 1: 0.600 |" in table
    assert "| grpo | 4 | 0.250 ± 0.071 | 0: 0.200, 1: 0.300 |" in table


def _policy(folder: Path, sha: str) -> str:
    folder.mkdir(parents=True)
    (folder / "warmstart.json").write_text(json.dumps({"weights_sha256": sha, "held_out_pass_at_1": 0.3}))
    return str(folder)


def test_a_later_session_goes_on_from_the_committed_summary(tmp_path) -> None:
    """The grid spans sessions: a summary merges what each session finished, ``restore`` marks those runs done in
    a fresh folder (so ``execute`` skips them), and runs of a policy with other weights are refused, not mixed."""
    policy = _policy(tmp_path / "policy", "a" * 64)
    first, second, summary = tmp_path / "first", tmp_path / "second", tmp_path / "summary.json"
    record = {"steps": 10, "curves": {"val/held_out/pass@1": [[10, 0.3]]}}
    done = staleness.Run("grid", "real", 1e-4, 0, 0, 10)
    done.folder(first).mkdir(parents=True)
    (done.folder(first) / "done.json").write_text(json.dumps(record))
    (first / "pilot.json").write_text(json.dumps({"real": {"lr": 1e-4}}))
    staleness.collect(first, summary, policy)
    assert staleness.restore(summary, second, policy) == 1
    assert staleness.execute(done, second, policy, [], "skipped") == record  # finished: no fit starts
    assert json.loads((second / "pilot.json").read_text()) == {"real": {"lr": 1e-4}}
    later = staleness.Run("grid", "grpo", 1e-4, 4, 0, 10)
    later.folder(second).mkdir(parents=True)
    (later.folder(second) / "done.json").write_text(json.dumps(record))
    staleness.collect(second, summary, policy)
    merged = json.loads(summary.read_text())
    assert set(merged["runs"]["grid"]) == {"real", "grpo"} and merged["policy"]["weights_sha256"] == "a" * 64
    other = _policy(tmp_path / "other", "b" * 64)
    with pytest.raises(SystemExit, match="SHA-256 aaaaaaaaaaaa"):
        staleness.restore(summary, tmp_path / "third", other)
    with pytest.raises(SystemExit, match="SHA-256 aaaaaaaaaaaa"):
        staleness.collect(second, summary, other)


def _grid_summary(scores: dict, clipped: dict | None = None, g3: bool = False) -> dict:
    """A summary whose grid run (arm, S, seed) ends at Pass@1 scores[arm][S][seed] (its last 3 validations), with
    GRPO's clipped share and domination clipped[S] (0.01 otherwise) and equal KLs."""
    grid: dict = {}
    for arm, by_s in scores.items():
        for s, values in by_s.items():
            for seed, value in enumerate(values):
                mechanism = (clipped or {}).get(s, 0.01) if arm == "grpo" else 0.01
                curves = {
                    "val/held_out/pass@1": [[0, 0.3], [250, value], [275, value], [300, value]],
                    "mechanism/clipped_pos_share": [[1, mechanism]],
                    "mechanism/neg_domination_mean": [[1, mechanism]],
                    "train/ppo_kl": [[1, 1e-4]],
                }
                grid.setdefault(arm, {})[f"lr3e-05-S{s}-seed{seed}"] = {"curves": curves}
    return {"runs": {"grid": grid}, "gates": {"G3": {"pass": g3}}}


FLAT = {0: [0.40, 0.42, 0.41], 32: [0.40, 0.42, 0.41]}


def test_the_verdict_follows_the_written_rule() -> None:
    """The rule of docs/staleness.md on made-up grids: each verdict where its conditions hold, none before all
    three seeds exist, and a loss whose S = 0 KL is off REAL's by more than 25 % flagged."""
    report = staleness_report
    supports = {arm: FLAT for arm in staleness.ARMS}
    supports["real"] = {0: [0.40, 0.42, 0.41], 32: [0.46, 0.47, 0.45]}  # REAL gains at S_high, the others do not
    result = report.verdict(_grid_summary(supports, clipped={0: 0.01, 32: 0.05}))
    assert result["verdict"] == "supports" and result["S_high"] == 32 and result["seeds"] == [0, 1, 2]
    assert [round(g, 6) for g in result["growth"]["grpo"]] == [0.06, 0.05, 0.04]
    # the same Pass@1 without GRPO's clip rising: not "supports"; REAL ≠ real_s0 at S_high: not "inert"
    assert report.verdict(_grid_summary(supports))["verdict"] == "tie"
    # one seed against: the gap does not grow "in every seed"
    against = {**supports, "real": {0: [0.40, 0.42, 0.41], 32: [0.46, 0.41, 0.45]}}
    assert report.verdict(_grid_summary(against, clipped={0: 0.01, 32: 0.05}))["verdict"] != "supports"
    inert = {arm: FLAT for arm in staleness.ARMS}
    assert report.verdict(_grid_summary(inert))["verdict"] == "inert mechanism"
    refutes = {**inert, "real": {0: [0.40, 0.42, 0.41], 32: [0.30, 0.33, 0.41]}, "real_s0": FLAT}
    assert report.verdict(_grid_summary(refutes, g3=True))["verdict"] == "refutes"
    assert report.verdict(_grid_summary(refutes, g3=False))["verdict"] != "refutes"  # G3 failed: unreachable
    two_seeds = {arm: {s: v[:2] for s, v in FLAT.items()} for arm in staleness.ARMS}
    assert report.verdict(_grid_summary(two_seeds))["verdict"].startswith("incomplete (2 of 3")
    off = _grid_summary(inert)
    for record in off["runs"]["grid"]["dapo"].values():
        record["curves"]["train/ppo_kl"] = [[1, 1.3e-4]]
    assert report.verdict(off)["lr_not_matched"] == ["dapo"]
    tables = report.grid_table(off) + report.mechanism_table(off)
    assert "| real_s0 | 32 | 0.410 ± 0.010 |" in tables and "| grpo | 32 | 3 |" in tables


def test_the_report_draws_its_figures_from_the_summary(tmp_path) -> None:
    """``--images`` writes both PNGs from a summary, also one that holds only some arms and one staleness level."""
    full = _grid_summary({arm: FLAT for arm in staleness.ARMS})
    partial = _grid_summary({"real": {0: [0.4, 0.5]}, "grpo": {0: [0.4]}})
    for name, summary in [("full", full), ("partial", partial)]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(summary))
        run = subprocess.run(
            [sys.executable, "-m", "experiments.staleness_report", str(path), "--images", str(tmp_path / name)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        for png in ("staleness_pass_at_1.png", "staleness_mechanism.png"):
            assert (tmp_path / name / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"wrote {tmp_path / name / png}" in run.stdout


def test_the_matched_lr_runs_are_reported_apart_from_the_rule() -> None:
    """REAL at the matched_lr stage's lr: its own table, per seed with both S, its KL against GRPO's and the grid
    REAL's; the verdict reads the grid alone."""
    summary = _grid_summary({arm: FLAT for arm in staleness.ARMS})
    assert staleness_report.matched_lr_table(summary) == ""
    matched = _grid_summary({"real": {0: [0.45, 0.44, 0.43], 32: [0.40, 0.30]}})["runs"]["grid"]["real"]
    for name, record in matched.items():
        record["curves"]["train/ppo_kl"] = [[1, 0.5e-4]]
        summary["runs"].setdefault("matched_lr", {}).setdefault("real", {})[name.replace("3e-05", "2.2e-05")] = record
    table = staleness_report.matched_lr_table(summary)
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == [
        "| 0 | 0.450 | 0.400 | 0.050 | 0.000 | 0.000 | 0.000 | +0.000 |",
        "| 1 | 0.440 | 0.300 | 0.140 | 0.000 | 0.000 | 0.000 | -0.120 |",
    ]
    assert "REAL 2.2e-05: S = 0" in table and "0.50× GRPO's, 0.50× the grid REAL's" in table
    assert staleness_report.verdict(summary) == staleness_report.verdict(
        _grid_summary({a: FLAT for a in staleness.ARMS})
    )


def test_a_run_is_read_from_its_newest_log_version(tmp_path, monkeypatch) -> None:
    """A fit killed before its first checkpoint starts again from step 0 in the next ``tb/version_N``: the run's
    curves are that version's (by N: version_10 after version_2), its resume checkpoint is looked up there, and a
    run whose logs stop short of its last step is refused, not recorded."""
    from torch.utils.tensorboard import SummaryWriter

    from experiments import replicate

    run = staleness.Run("grid", "grpo", 1e-4, 32, 1, 10)
    folder = run.folder(tmp_path)
    for version, steps in [("version_2", 3), ("version_10", 10)]:
        with SummaryWriter(folder / "tb" / version) as writer:
            for step in range(steps):
                writer.add_scalar("train/ppo_kl", 0.1 * step, step)
    assert replicate.run_logs(folder) == folder / "tb" / "version_10"
    assert [at for at, _ in staleness.curves(folder)["train/ppo_kl"]] == list(range(10))
    assert replicate.run_logs(tmp_path / "none") == tmp_path / "none" / "tb" / "version_0"

    (folder / "tb" / "version_10" / "checkpoints").mkdir()
    (folder / "tb" / "version_10" / "checkpoints" / "last.ckpt").write_text("")
    calls: list[list[str]] = []
    monkeypatch.setattr(replicate.subprocess, "call", lambda args, **_: calls.append(args) or 0)
    replicate.run_fit(folder, ["fit"], "resume")
    assert calls[0][-2:] == ["--ckpt_path", str(folder / "tb" / "version_10" / "checkpoints" / "last.ckpt")]

    def fit(at: Path, args: list[str], label: str) -> float:
        with SummaryWriter(at / "tb" / "version_11") as writer:
            writer.add_scalar("train/ppo_kl", 0.5, 4)  # killed again at step 4
        return 1.0

    monkeypatch.setattr(staleness, "run_fit", fit)
    with pytest.raises(SystemExit, match="version_11 end at step 4, not 9; nothing recorded"):
        staleness.execute(run, tmp_path, "policy", [], "[1/1] grid grpo")
    assert not (folder / "done.json").exists()

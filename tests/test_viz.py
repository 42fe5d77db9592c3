"""``real-lightning plot`` writes the three PNGs from a real short run (REAL and GRPO side by side)."""

from __future__ import annotations

import struct

import pytest

from real_lightning.cli import main
from tests.test_cli import CONFIGS


@pytest.mark.slow
def test_plot_command_writes_pngs_from_real_runs(policy_dir, tmp_path, capsys) -> None:
    for loss in ("real", "grpo"):
        main(
            [
                "fit",
                "-c",
                str(CONFIGS / "quickstart.yaml"),
                "--model.pretrained",
                policy_dir,
                "--model.loss",
                loss,
                "--model.loss_kwargs",
                "{}",
                "--model.export_dir",
                "null",
                "--trainer.max_steps",
                "4",
                "--trainer.val_check_interval",
                "2",
                "--trainer.log_every_n_steps",
                "1",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.default_root_dir",
                str(tmp_path),
                "--trainer.logger.init_args.save_dir",
                str(tmp_path),
                "--trainer.logger.init_args.name",
                loss,
                "--data.val.held_out.limit",
                "4",
                "--data.validation.prompts_per_batch",
                "4",
                "--data.schedule.prompts_per_rollout",
                "4",
                "--data.schedule.prompts_per_minibatch",
                "2",
                "--data.schedule.rollouts_per_prompt",
                "4",
                "--data.engine.init_args.max_new_tokens",
                "6",
                "--data.verifier.reward",
                "tests.rewards_for_tests:contains_seven",
                "--data.verifier.truncated_is_wrong",
                "false",
                "--data.validation.samples",
                "4",
                "--pass_at_k.ks",
                "[1, 4]",
                "--trainer.callbacks",
                '[{"class_path": "real_lightning.callbacks.GradientWeightMonitor", '
                '"init_args": {"every_n_steps": 1, "records_dir": "gradient_weights"}}]',
            ]
        )
    capsys.readouterr()
    main(["plot", str(tmp_path / "real"), str(tmp_path / "grpo"), "--out", str(tmp_path / "plots")])
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in written] == ["pass_at_1.png", "entropy.png", "weights_vs_score.png"]
    for path in written:
        with open(path, "rb") as f:
            data = f.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        width, height = struct.unpack(">II", data[16:24])
        assert width > 300 and height > 200

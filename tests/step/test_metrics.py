"""The step's metrics: sums packed in a fixed order for one all-reduce, the max of the mismatch, the names."""

from __future__ import annotations

import torch

from real_lightning.losses import LOSSES
from real_lightning.step.importance import ImportanceTerms, Mismatch
from real_lightning.step.metrics import SUMS, TOKEN_WEIGHTED, StepMetrics, logged_metrics


def _collectives(monkeypatch) -> list[tuple[str, torch.Tensor]]:
    sent: list[tuple[str, torch.Tensor]] = []

    def record(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        sent.append((op, tensor.clone()))
        return tensor.clone()

    monkeypatch.setattr("real_lightning.step.metrics.all_reduce", record)
    return sent


def test_sums_are_packed_in_a_fixed_order_with_the_rollout_stats_by_name(monkeypatch) -> None:
    sent = _collectives(monkeypatch)
    step = StepMetrics(torch.device("cpu"))
    step.add("tokens", torch.tensor(5))
    step.add("loss", torch.tensor(0.5, dtype=torch.float32))
    step.add("loss", 0.25)
    total, logged = step.reduce({"time/b": 2.0, "rollout/a": 1}, world_size=2, kl_active=False)
    assert [op for op, _ in sent] == ["sum"]  # no behaviour log-probs: no max
    packed = sent[0][1]
    assert packed.dtype == torch.float64 and packed.shape == (len(SUMS) + 2,)
    expected = torch.zeros(len(SUMS) + 2, dtype=torch.float64)
    expected[SUMS.index("tokens")], expected[SUMS.index("loss")] = 5, 0.75
    expected[-2:] = torch.tensor([1.0, 2.0])  # sorted by name: rollout/a, time/b
    assert torch.equal(packed, expected)
    assert float(total["loss"]) == 0.75 and float(total["time/b"]) == 2.0
    assert logged["rollout/a"] == 0.5 and logged["time/b"] == 1.0  # averaged over the ranks
    assert list(logged)[:5] == [
        "train/loss",
        "train/entropy",
        "train/contrast_fraction",
        "train/weight_abs_mean_pos",
        "train/weight_abs_mean_neg",
    ]


def test_the_mismatch_max_is_a_running_max_then_one_max_all_reduce(monkeypatch) -> None:
    sent = _collectives(monkeypatch)
    step = StepMetrics(torch.device("cpu"))
    one = torch.tensor(1.0)
    for largest in (0.5, float("nan"), 2.0, 1.5):  # NaN never replaces the running max, as Python's max
        step.add_mismatch(Mismatch(abs_sum=one, k3_sum=one, tokens=torch.tensor(2), abs_max=torch.tensor(largest)))
    _, logged = step.reduce(None, world_size=1, kl_active=False)
    assert [op for op, _ in sent] == ["sum", "max"]
    assert torch.equal(sent[1][1], torch.tensor([2.0], dtype=torch.float64))
    assert float(logged["rollout/mismatch_abs_max"]) == 2.0
    assert float(logged["rollout/mismatch_abs_mean"]) == 0.5 and float(logged["rollout/mismatch_k3"]) == 0.5


def test_logged_metrics_are_named_only_when_some_rank_reported_them() -> None:
    total = {n: torch.zeros((), dtype=torch.float64) for n in SUMS}
    total |= {"tokens": torch.tensor(4.0), "ppo_kl": torch.tensor(2.0), "has_ppo_kl": torch.tensor(1.0)}
    total |= {"is_weight": torch.tensor(3.0), "is_clipped": torch.tensor(1.0), "is_units": torch.tensor(4.0)}
    total |= {"kl_ref": torch.tensor(0.25), "r": torch.tensor(6.0)}
    logged = logged_metrics(total, ["r"], world_size=3, kl_active=True)
    assert {f"train/{n}" for n in TOKEN_WEIGHTED} & logged.keys() == {"train/ppo_kl"}
    assert float(logged["train/ppo_kl"]) == 0.5 and float(logged["train/kl_ref"]) == 0.25 and float(logged["r"]) == 2
    assert float(logged["rollout/is_weight_mean"]) == 0.75 and float(logged["rollout/is_clipped_fraction"]) == 0.25
    assert "rollout/mismatch_k3" not in logged
    assert "train/kl_ref" not in logged_metrics(total, [], world_size=1, kl_active=False)


def test_a_micro_batch_adds_its_loss_metrics_and_per_rollout_outputs() -> None:
    """Two micro-batches of a real loss: the sums, the importance terms, the skip flag, per-rollout rows in order."""
    mask = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, 0.0], [-1.5, -1.0], [0.0, -3.0]])
    rewards, groups = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1])
    step = StepMetrics(torch.device("cpu"))
    outs = []
    for rows, finite in ((slice(0, 2), True), (slice(2, 4), False)):
        out = LOSSES["grpo"](
            logprobs=logprobs[rows], old_logprobs=logprobs[rows] + 0.1, response_mask=mask[rows],
            rewards=rewards[rows], group_ids=groups[rows],
        )  # fmt: skip
        step.add_loss(out, mask[rows], torch.ones(2, 2), torch.tensor(finite))
        outs.append(out)
    step.add_importance(ImportanceTerms(torch.ones(2), torch.tensor(1.5), torch.tensor(1), 2))
    result = step.result(None, None, world_size=1, kl_active=False)
    assert result.skipped  # one micro-batch's loss was not finite
    metrics = result.metrics
    assert all(v.dtype == torch.float32 for v in metrics.values())
    assert metrics["train/loss"] == (outs[0].loss + outs[1].loss).float()
    assert float(metrics["train/entropy"]) == 1.0  # entropy 1 at every response token
    assert float(metrics["train/contrast_fraction"]) == 0.5  # group 0 has contrast, group 1 not
    ppo_kl = (outs[0].metrics["ppo_kl"] * 3 + outs[1].metrics["ppo_kl"] * 3) / 6
    torch.testing.assert_close(metrics["train/ppo_kl"], ppo_kl.float())
    assert float(metrics["rollout/is_weight_mean"]) == 0.75 and float(metrics["rollout/is_clipped_fraction"]) == 0.5
    per_rollout = result.loss_output.metrics
    assert torch.equal(per_rollout["grad_weights"], torch.cat([o.metrics["grad_weights"] for o in outs]))
    assert torch.equal(per_rollout["labels"], torch.tensor([1, 0, -1, -1]))
    assert per_rollout["weight_normalizer"] == outs[0].metrics["weight_normalizer"]
    assert StepMetrics(torch.device("cpu")).loss_output(torch.zeros(())) is None  # a rank without rollouts

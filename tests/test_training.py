"""The module, the rollout collector and the data module together, on a tiny random policy."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import yaml

from real_lightning.data.config import ValidationConfig, VerifierConfig
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.data.sources import DatasetSpec
from real_lightning.module import RealPolicyModule, lr_factor
from real_lightning.policy.loading import BUILTIN
from real_lightning.rollout.hf import HFEngine
from real_lightning.rollout.schedule import RolloutSchedule
from real_lightning.step.accumulate import old_logprobs_pass
from real_lightning.step.output import step_output
from real_lightning.utils.registry import UnknownNameError

REWARD = "tests.rewards_for_tests:contains_seven"


def make_datamodule(engine=None, val_limit: int = 8, seed: int = 0, **schedule) -> RolloutDataModule:
    """The built-in task, 4 prompts × 4 rollouts of 6 tokens, a cheap reward; ``schedule`` overrides."""
    return RolloutDataModule(
        train=DatasetSpec(source="builtin:arithmetic"),
        val={"held_out": DatasetSpec(source="builtin:arithmetic", split="test", limit=val_limit)},
        engine=engine or HFEngine(max_new_tokens=6),
        schedule=RolloutSchedule(**{"prompts_per_rollout": 4, "rollouts_per_prompt": 4, **schedule}),
        verifier=VerifierConfig(reward=REWARD, workers=1, truncated_is_wrong=False),
        validation=ValidationConfig(samples=4, prompts_per_batch=4),
        seed=seed,
        tokenizer_from=BUILTIN,  # the character tokenizer every test policy shares
    )


def quiet_trainer(root, max_steps: int, **kwargs) -> pl.Trainer:
    """A CPU trainer for ``max_steps`` optimizer steps: no logger, checkpoints, validation or progress bar
    unless ``kwargs`` say otherwise."""
    settings = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "limit_val_batches": 0}
    return pl.Trainer(max_steps=max_steps, enable_model_summary=False, default_root_dir=root, **{**settings, **kwargs})


def attached(module: RealPolicyModule, datamodule: RolloutDataModule) -> RolloutDataModule:
    """The datamodule set up for fit with the module's tokenizer, its engines holding the module's weights."""
    datamodule.attach_tokenizer(module.tokenizer)
    datamodule.setup("fit")
    module.push_weights(datamodule.collector)
    return datamodule


def _loss(module: RealPolicyModule, batch, old):
    logprobs, _ = module.response_logprobs(batch)
    return module.loss_fn(
        logprobs=logprobs,
        old_logprobs=old if old is not None else logprobs.detach(),
        response_mask=batch.response_mask,
        rewards=batch.rewards,
        group_ids=batch.group_ids,
    )


def test_scores_are_zero_on_the_first_minibatch(policy_dir) -> None:
    """π_old from the no-grad pass equals π_θ before any update: |s_i| < 1e-5."""
    module = RealPolicyModule(pretrained=policy_dir, lr=1e-3)
    dm = attached(module, make_datamodule(recompute_old_logprobs=True, prompts_per_minibatch=2))
    request = next(iter(dm.train_dataloader()))
    rollouts = dm.collector.rollouts(request)
    assert module.needs_old_logprobs(rollouts, dm.collector)
    rollouts.old_logprobs = old_logprobs_pass(module.response_logprobs, rollouts, (None, 4), module.device)
    batch = dm.collector.minibatch(request)
    assert batch.old_logprobs is not None and len(batch) == 8
    assert _loss(module, batch, batch.old_logprobs).metrics["scores"].abs().max() < 1e-5


def test_on_policy_single_update_skips_the_old_logprob_pass(policy_dir) -> None:
    module = RealPolicyModule(pretrained=policy_dir)
    dm = attached(module, make_datamodule())
    rollouts = dm.collector.rollouts(next(iter(dm.train_dataloader())))
    assert rollouts.policy_version == 0 and not module.needs_old_logprobs(rollouts, dm.collector)
    rollouts.policy_version = -1  # sampled by older weights (an engine that lags): π_old needs its pass
    assert module.needs_old_logprobs(rollouts, dm.collector)


def test_requests_are_pure_functions_of_the_step(policy_dir) -> None:
    module = RealPolicyModule(pretrained=policy_dir)
    dm = attached(module, make_datamodule(prompts_per_rollout=6, prompts_per_minibatch=2, ppo_epochs=2))
    stream = iter(dm.train_dataloader())
    first = [next(stream) for _ in range(8)]
    assert [r.rollout_index for r in first] == [0] * 6 + [1] * 2
    assert [r.minibatch_index for r in first] == [0, 1, 2, 3, 4, 5, 0, 1]
    dm.collector.next_step = 5  # a resumed run asks again from its saved position
    assert [next(iter(dm.train_dataloader())) for _ in range(1)] == [first[5]]
    assert len(set(first[0].prompt_indices) | set(first[6].prompt_indices)) == 12  # no prompt twice in an epoch


def test_groups_are_never_split_across_minibatches_or_epochs(policy_dir) -> None:
    module = RealPolicyModule(pretrained=policy_dir)
    dm = attached(module, make_datamodule(prompts_per_rollout=6, prompts_per_minibatch=3, ppo_epochs=2))
    assert dm.schedule.minibatches_per_rollout == 4
    requests = iter(dm.train_dataloader())
    first_rollout = [dm.collector.minibatch(next(requests)) for _ in range(4)]
    assert [b.num_groups for b in first_rollout] == [3, 3, 3, 3]
    for b in first_rollout:
        assert torch.all(torch.bincount(b.group_ids)[torch.unique(b.group_ids)] == 4)
    epoch_groups = [
        sorted(torch.unique(torch.cat([b.group_ids for b in first_rollout[i : i + 2]])).tolist()) for i in (0, 2)
    ]
    assert epoch_groups == [list(range(6))] * 2
    assert first_rollout[0].stats and not first_rollout[1].stats  # rollout statistics logged once
    assert dm.collector.next_step == 4 and next(requests).rollout_index == 1


def test_dynamic_sampling_keeps_only_groups_with_contrast(policy_dir) -> None:
    module = RealPolicyModule(pretrained=policy_dir)
    dm = attached(module, make_datamodule(dynamic_sampling=True, max_sampling_rounds=4, prompts_per_rollout=3))
    batch = dm.collector.minibatch(next(iter(dm.train_dataloader())))
    for g in torch.unique(batch.group_ids):
        rewards = batch.rewards[batch.group_ids == g]
        assert rewards.min() < rewards.max()
    assert batch.num_groups <= 3 and batch.stats["rollout/sampling_rounds"] >= 1


def test_non_finite_loss_skips_the_update_and_training_continues(policy_dir, tmp_path) -> None:
    module = RealPolicyModule(pretrained=policy_dir, lr=1e-2)
    real_loss = module.loss_fn
    calls = {"n": 0}

    def sometimes_nan(**kwargs):
        calls["n"] += 1
        out = real_loss(**kwargs)
        if calls["n"] == 2:
            out.loss = out.loss * float("nan")
        return out

    module.loss_fn = sometimes_nan
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(module, make_datamodule())
    # Lightning counts the skipped step (no gradient, no parameter change) as an optimizer step
    assert calls["n"] == 3 and module.skipped_steps == 1 and trainer.global_step == 3
    after = module.policy.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_unknown_names_list_the_valid_ones(policy_dir) -> None:
    with pytest.raises(UnknownNameError, match="unknown loss 'ppo'; valid names: dapo, grpo, gspo, real"):
        RealPolicyModule(pretrained=policy_dir, loss="ppo")
    with pytest.raises(ValueError, match="loss 'real' has no hyper-parameter 'clip_low'; valid: tau"):
        RealPolicyModule(pretrained=policy_dir, loss="real", loss_kwargs={"clip_low": 0.2})
    with pytest.raises(KeyError, match="unknown reward function 'maths'; valid names: countdown, math"):
        RolloutDataModule(train=DatasetSpec(source="builtin:arithmetic"), verifier=VerifierConfig(reward="maths"))
    with pytest.raises(ValueError, match=r"schedule.prompts_per_minibatch must be in"):
        make_datamodule(prompts_per_minibatch=9)
    with pytest.raises(ValueError, match=r"schedule.max_tokens_per_micro_batch must be >= 1"):
        make_datamodule(max_tokens_per_micro_batch=0)
    with pytest.raises(ValueError, match=r"prompts_per_rollout=5 counts prompts over all 2 ranks"):
        RolloutSchedule(prompts_per_rollout=5).check_world_size(2)
    with pytest.raises(ValueError, match=r"verifier.timeout_s must be > 0"):
        VerifierConfig(timeout_s=0)


def test_lr_schedule_warmup_then_constant_or_cosine() -> None:
    assert [lr_factor(s, 4, "constant", 100, 0.0) for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert lr_factor(4, 4, "cosine", 104, 0.1) == pytest.approx(1.0)
    assert lr_factor(54, 4, "cosine", 104, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(104, 4, "cosine", 104, 0.1) == pytest.approx(0.1)


def test_gradient_checkpointing_gives_the_same_gradients(policy_dir) -> None:
    plain = RealPolicyModule(pretrained=policy_dir)
    checkpointed = RealPolicyModule(pretrained=policy_dir, gradient_checkpointing=True)
    assert checkpointed.policy.is_gradient_checkpointing
    dm = attached(plain, make_datamodule())
    batch = dm.collector.minibatch(next(iter(dm.train_dataloader())))
    batch.old_logprobs = old_logprobs_pass(plain.response_logprobs, batch, (None, None), plain.device) - 0.1
    grads = []
    for module in (plain, checkpointed):
        _loss(module, batch, batch.old_logprobs).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.policy.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_kl_to_the_frozen_starting_policy(policy_dir, tmp_path) -> None:
    """kl_coef > 0: π_ref is the starting policy, outside the checkpoint and the optimizer, unchanged by training;
    train/kl_ref is 0 on the first step (π_θ = π_ref) and positive once the policy moved."""
    module = RealPolicyModule(pretrained=policy_dir, lr=1e-2, kl_coef=0.1)
    start = {k: v.clone() for k, v in module.reference.model.state_dict().items()}
    assert not any(k.startswith("reference") for k in module.state_dict())
    logged = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            logged.append(float(trainer.callback_metrics["train/kl_ref"]))

    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[Record()], log_every_n_steps=1)
    trainer.fit(module, make_datamodule(ppo_epochs=3))
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in module.reference.model.parameters())
    assert all(torch.equal(v, start[k]) for k, v in module.reference.model.state_dict().items())
    assert logged[0] == pytest.approx(0.0, abs=1e-7) and logged[2] > 1e-6, logged


@pytest.mark.parametrize("clip", [1e-3, 1e6])
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_gradient_clipping_by_norm_reuses_the_logged_norm(policy_dir, clip) -> None:
    """The module clips with the norm it measured for train/grad_norm: the same result as torch's
    clip_grad_norm_ (which measures again), whether the clip acts or not."""
    module = RealPolicyModule(pretrained=policy_dir)
    params = list(module.policy.parameters())
    torch.manual_seed(0)
    for p in params:
        p.grad = torch.randn_like(p)
    references = [p.detach().clone() for p in params]
    for ref, p in zip(references, params, strict=True):
        ref.grad = p.grad.clone()
    reference_norm = torch.nn.utils.clip_grad_norm_(references, clip)
    optimizer = torch.optim.SGD(params, lr=1.0)
    module.on_before_optimizer_step(optimizer)  # no trainer: the log calls are no-ops
    torch.testing.assert_close(module._grad_norm, reference_norm)
    module.configure_gradient_clipping(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
    for p, ref in zip(params, references, strict=True):
        torch.testing.assert_close(p.grad, ref.grad)
    assert (float(reference_norm) > clip) == (clip == 1e-3)


def test_csv_logger_records_the_same_metrics(policy_dir, tmp_path) -> None:
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from real_lightning.callbacks import PassAtKLogger

    module = RealPolicyModule(pretrained=policy_dir, lr=1e-3)
    trainer = pl.Trainer(
        max_steps=2,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[PassAtKLogger()],
    )
    trainer.fit(module, make_datamodule())
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"train/loss", "rollout/reward_mean", "val/held_out/pass@1", "time/update_s"} <= columns
    assert any(row["val/held_out/pass@1"] for row in rows)
    hparams = yaml.load(next(tmp_path.rglob("hparams.yaml")).read_text(), Loader=yaml.FullLoader)  # module + data
    assert hparams["loss"] == "real" and hparams["data"]["verifier"]["grader"] == "lenient"
    assert hparams["data"]["schedule"]["prompts_per_rollout"] == 4


def test_collector_state_restores_the_rollout_batch_in_flight(policy_dir) -> None:
    module = RealPolicyModule(pretrained=policy_dir)
    dm = attached(module, make_datamodule(prompts_per_minibatch=2))  # two optimizer steps per rollout batch
    requests = iter(dm.train_dataloader())
    dm.collector.minibatch(next(requests))
    state = dm.state_dict()
    assert state["collector"]["next_step"] == 1 and state["collector"]["ranks"][0]["batch"] is not None
    second = dm.collector.minibatch(next(requests))
    assert dm.state_dict()["collector"]["ranks"][0]["batch"] is None  # nothing left in flight: nothing saved

    restored = make_datamodule(prompts_per_minibatch=2)
    restored.load_state_dict(state)  # before setup, as Lightning may do: applied once the collector exists
    attached(module, restored)
    request = next(iter(restored.train_dataloader()))
    assert request[:3] == (1, 0, 1) and not restored.collector.needs_generation(request)
    again = restored.collector.minibatch(request)
    assert torch.equal(again.input_ids, second.input_ids) and torch.equal(again.rewards, second.rewards)


def test_an_engine_that_can_sleep_is_put_to_sleep_after_sampling(policy_dir) -> None:
    class SleepyEngine(HFEngine):
        sleeps = 0

        def sleep(self) -> None:
            self.sleeps += 1

    engine = SleepyEngine(max_new_tokens=6)
    module = RealPolicyModule(pretrained=policy_dir)
    dm = attached(module, make_datamodule(engine=engine, prompts_per_minibatch=2))
    requests = iter(dm.train_dataloader())
    dm.collector.minibatch(next(requests))
    dm.collector.minibatch(next(requests))  # the same rollout batch: no new sampling
    assert engine.sleeps == 1


class _BehaviourEngine(HFEngine):
    """Reports behaviour log-probs (a constant −1.5 per response token), like an engine with its own kernels."""

    def generate(self, prompts, n, seed):
        gen = super().generate(prompts, n, seed)
        gen.behaviour_logprobs = torch.full(gen.response_mask.shape, -1.5).where(gen.response_mask, torch.zeros(()))
        return gen


class _OldLogprobsRecorder(pl.Callback):
    def __init__(self) -> None:
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollouts = step_output(outputs).rollouts
        self.pairs.append((rollouts.old_logprobs, rollouts.behaviour_logprobs))


@pytest.mark.parametrize("source", ["trainer", "engine"])
def test_old_logprobs_come_from_the_engine_when_configured(policy_dir, tmp_path, source) -> None:
    recorder = _OldLogprobsRecorder()
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[recorder])
    module = RealPolicyModule(pretrained=policy_dir)
    trainer.fit(module, make_datamodule(engine=_BehaviourEngine(max_new_tokens=6), old_logprobs=source))
    metrics = trainer.callback_metrics
    assert len(recorder.pairs) == 2
    for old, behaviour in recorder.pairs:
        if source == "engine":  # π_old is the sampler's: no gap to measure
            assert torch.equal(old, behaviour) and float(metrics["rollout/mismatch_abs_max"]) == 0.0
        else:  # π_old is the trainer's (on-policy: π_θ.detach()), 1.5 away from the constant on average
            assert old is None and float(metrics["rollout/mismatch_abs_max"]) > 0.1


def test_old_logprobs_from_an_engine_without_behaviour_logprobs_is_an_error(policy_dir, tmp_path) -> None:
    trainer = quiet_trainer(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match=r"data.schedule.old_logprobs is 'engine'.*no behaviour log-probs"):
        trainer.fit(RealPolicyModule(pretrained=policy_dir), make_datamodule(old_logprobs="engine"))


def test_old_logprobs_option_is_checked() -> None:
    with pytest.raises(ValueError, match=r"schedule.old_logprobs must be 'trainer' or 'engine'"):
        RolloutSchedule(old_logprobs="behaviour")


def test_engines_are_torn_down_when_fit_ends_and_set_up_again_for_the_next_use(policy_dir, tmp_path) -> None:
    class CountingEngine(HFEngine):
        setups = teardowns = 0

        def setup(self, model, tokenizer) -> None:
            self.setups += 1
            super().setup(model, tokenizer)

        def teardown(self) -> None:
            self.teardowns += 1
            super().teardown()

    engine = CountingEngine(max_new_tokens=6)
    module, datamodule = RealPolicyModule(pretrained=policy_dir), make_datamodule(engine=engine)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=1)
    trainer.validate(module, datamodule=datamodule)  # a validation before fit keeps the engine for the fit
    assert (engine.setups, engine.teardowns) == (1, 0)
    trainer.fit(module, datamodule)
    assert (engine.setups, engine.teardowns) == (1, 1) and engine._model is None
    trainer.validate(module, datamodule=datamodule)
    assert (engine.setups, engine.teardowns) == (2, 1)


class _StepOutputs(pl.Callback):
    """Keeps the StepOutput of every step and the grad norm the module logged."""

    def __init__(self) -> None:
        self.steps: list = []
        self.logged_grad_norms: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(step_output(outputs))
        self.logged_grad_norms.append(trainer.callback_metrics.get("train/grad_norm"))


def _fit_records(policy_dir, tmp_path, engine) -> _StepOutputs:
    recorder = _StepOutputs()
    pl.seed_everything(0)
    module = RealPolicyModule(pretrained=policy_dir, lr=1e-2)
    trainer = quiet_trainer(tmp_path, max_steps=4, callbacks=[recorder])
    trainer.fit(module, make_datamodule(engine=engine, prompts_per_minibatch=2))
    return recorder


def test_callbacks_get_a_typed_step_output(policy_dir, tmp_path) -> None:
    """``on_train_batch_end`` receives the step's StepOutput: its metrics, per-rollout loss values, the rollouts
    with their prompt and response texts, and the gradient norm the module logged."""
    recorder = _fit_records(policy_dir, tmp_path, HFEngine(max_new_tokens=6))
    assert len(recorder.steps) == 4
    for step, logged in zip(recorder.steps, recorder.logged_grad_norms, strict=True):
        assert not step.skipped and "train/loss" in step.metrics
        assert step.grad_norm is not None and torch.equal(step.grad_norm, logged)
        assert len(step.rollouts) == len(step.loss_output.metrics["scores"]) == 2 * 4  # 2 prompts × 4 rollouts
        assert len(step.rollouts.prompts) == len(step.rollouts.responses) == len(step.rollouts)
        assert all(prompt.endswith("=") for prompt in step.rollouts.prompts)  # the arithmetic task's prompts


def test_an_engine_with_a_copy_of_the_weights_trains_exactly_like_the_shared_one(policy_dir, tmp_path) -> None:
    """4 steps, 2 rollout batches (the second sampled by weights pushed after 2 updates): the same losses,
    rewards and gradient norms, bit for bit."""
    shared = _fit_records(policy_dir, tmp_path / "shared", HFEngine(max_new_tokens=6))
    copied = _fit_records(policy_dir, tmp_path / "copy", HFEngine(max_new_tokens=6, weights="copy"))
    for a, b in zip(shared.steps, copied.steps, strict=True):
        assert torch.equal(a.metrics["train/loss"], b.metrics["train/loss"])
        assert torch.equal(a.rollouts.input_ids, b.rollouts.input_ids) and torch.equal(a.grad_norm, b.grad_norm)


def test_the_module_hands_log_probs_to_the_collector_and_writes_nothing_into_its_batch(policy_dir) -> None:
    """One owner per record: π_old reaches the batch in flight through the collector, as a new record; the
    record served before is unchanged, and what a checkpoint saves holds π_old."""
    module = RealPolicyModule(pretrained=policy_dir, lr=1e-3)
    dm = attached(module, make_datamodule(recompute_old_logprobs=True, prompts_per_minibatch=2))
    module.trainer = quiet_trainer(".", max_steps=1)
    request = next(iter(dm.train_dataloader()))
    served = dm.collector.rollouts(request)
    assert served.old_logprobs is None
    module._attach_logprobs(dm.collector, served, (None, None))
    assert served.old_logprobs is None  # untouched
    in_flight = dm.collector.rollouts(request)
    assert in_flight is not served and in_flight.old_logprobs is not None
    assert torch.equal(in_flight.input_ids, served.input_ids)
    dm.collector.minibatch(request)
    saved = dm.state_dict()["collector"]["ranks"][0]["batch"]
    assert torch.equal(saved["old_logprobs"], in_flight.old_logprobs)

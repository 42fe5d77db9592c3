"""``model.loss`` in its three forms: a registered name (with ``loss_kwargs``), a typed loss (``class_path`` and
``init_args`` of :class:`~real_lightning.losses.specs.LossSpec`) and a ``"package.module:function"`` of one's own;
``fit --help`` documents the typed losses' hyper-parameters; a loss may declare a normaliser of its own."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import yaml

from real_lightning.checkpoints.resume import ResumeRefused
from real_lightning.cli import RealLightningCLI, main
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.losses import (
    GRPO,
    GSPO,
    LOSS_SPECS,
    LOSSES,
    REAL,
    BatchCounts,
    LossSpec,
    loss_config,
    loss_options,
    real_loss,
    resolve_loss,
)
from real_lightning.module import RealPolicyModule
from real_lightning.utils.registry import UnknownNameError
from tests.losses import custom_loss
from tests.losses.conftest import LOSS_NAMES, make_batch, scale_for
from tests.test_resume_truth import _args
from tests.test_update import _accumulate, _rollouts

REAL_PATH = "real_lightning.losses.REAL"

# --- the typed losses -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_each_typed_loss_is_its_registered_function_with_its_defaults(name: str) -> None:
    spec = LOSS_SPECS[name]()
    assert spec.name == name and spec.fn is LOSSES[name]
    assert spec.hparams == loss_options(name)  # every hyper-parameter, with the function's default
    batch = make_batch(3, scale=scale_for(name))
    torch.testing.assert_close(spec(**batch.kwargs()).loss, LOSSES[name](**batch.kwargs()).loss, rtol=0, atol=0)


def test_a_typed_loss_computes_with_its_own_hyper_parameters() -> None:
    batch = make_batch(4)
    ours = REAL(tau=0.25)(**batch.kwargs()).loss
    assert torch.equal(ours, real_loss(**batch.kwargs(), tau=0.25).loss)
    assert not torch.allclose(ours, real_loss(**batch.kwargs()).loss)
    gspo = GSPO(log_ratio_clamp=10.0, clip_high=0.01)
    assert gspo.hparams == {**loss_options("gspo"), "log_ratio_clamp": 10.0, "clip_high": 0.01}
    assert resolve_loss(gspo) == (gspo, {})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: REAL(tau=0), "REAL.tau must be > 0, got 0"),
        (lambda: REAL(tau=-1.0), "REAL.tau must be > 0, got -1.0"),
        (lambda: LOSS_SPECS["real_bce"](tau=float("nan")), "REALBCE.tau must be > 0, got nan"),
        (lambda: GRPO(clip_low=-0.1), "GRPO.clip_low must be >= 0, got -0.1"),
        (lambda: GRPO(adv_eps=0), "GRPO.adv_eps must be > 0 while scale_adv_by_std is true"),
        (lambda: GSPO(log_ratio_clamp=0), "GSPO.log_ratio_clamp must be > 0 or null, got 0"),
        (lambda: LOSS_SPECS["dapo"](scale_adv_by_std="yes"), "DAPO.scale_adv_by_std must be true or false"),
        (lambda: REAL(tau="0.5"), "REAL.tau must be a number"),
    ],
)
def test_a_bad_hyper_parameter_fails_at_construction_naming_it(build, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_valid_edge_values_pass() -> None:
    GRPO(adv_eps=0, scale_adv_by_std=False, clip_low=0)
    GSPO(log_ratio_clamp=None)


def test_a_bad_hyper_parameter_from_the_cli_names_it(tmp_path) -> None:
    loss = f"{{class_path: {REAL_PATH}, init_args: {{tau: 0}}}}"
    with pytest.raises(ValueError, match=r"REAL\.tau must be > 0, got 0"):
        main(_args(tmp_path, "--model.loss", loss, "--model.loss_kwargs", "null"))


def test_a_typed_loss_is_saved_as_plain_data_and_read_back(tmp_path) -> None:
    spec = GSPO(log_ratio_clamp=10.0)
    config = loss_config(spec)
    assert config == {"class_path": "real_lightning.losses.specs.GSPO", "init_args": spec.hparams}
    torch.save({"loss": config}, tmp_path / "x.pt")
    loaded = torch.load(tmp_path / "x.pt", weights_only=True)["loss"]  # what a checkpoint's hparams hold
    assert resolve_loss(loaded) == (spec, {}) and repr(spec).startswith("GSPO(clip_low=0.0003")
    assert loss_config("grpo") == "grpo"
    with pytest.raises(ValueError, match="is not a subclass of LossSpec"):
        resolve_loss({"class_path": "collections.OrderedDict", "init_args": {}})


def test_the_module_saves_a_typed_loss_as_plain_data() -> None:
    module = RealPolicyModule(pretrained="builtin:tiny", loss=REAL(tau=0.25))
    assert module.loss_fn == REAL(tau=0.25) and module.loss_kwargs == {}
    assert module.hparams["loss"] == {"class_path": "real_lightning.losses.specs.REAL", "init_args": {"tau": 0.25}}
    named = RealPolicyModule(pretrained="builtin:tiny", loss="real", loss_kwargs={"tau": 0.25})
    assert named.loss_fn is LOSSES["real"] and named.loss_kwargs == {"tau": 0.25} and named.hparams["loss"] == "real"


# --- names, paths, and what is refused ------------------------------------------------------------------------


def test_a_name_with_loss_kwargs_is_the_function_with_those_kwargs() -> None:
    fn, kwargs = resolve_loss("dapo", {"clip_high": 0.3})
    assert fn is LOSSES["dapo"] and kwargs == {"clip_high": 0.3}
    assert resolve_loss("real", None) == (LOSSES["real"], {})


def test_an_unknown_name_lists_the_valid_ones() -> None:
    for call in (lambda: resolve_loss("ppo"), lambda: RealPolicyModule(pretrained="builtin:tiny", loss="GRPO")):
        with pytest.raises(UnknownNameError) as error:
            call()
        message = str(error.value)
        assert "valid names: dapo, grpo, gspo, real, real_bce, real_product, real_s0" in message
        assert "real_lightning.losses.REAL, REALBCE, REALProduct, REALS0, GRPO, DAPO, GSPO" in message
        assert "'package.module:function'" in message
    with pytest.raises(ValueError, match=r"loss 'real' has no hyper-parameter 'clip_low'; valid: tau$"):
        resolve_loss("real", {"clip_low": 0.2})


def test_loss_kwargs_with_a_typed_loss_are_refused() -> None:
    with pytest.raises(ValueError, match=r"model.loss_kwargs \{'tau': 0.5\} cannot be combined with the typed loss "):
        RealPolicyModule(pretrained="builtin:tiny", loss=REAL(tau=0.25), loss_kwargs={"tau": 0.5})
    assert resolve_loss(REAL(), {}) == (REAL(), {})  # empty (or null) loss_kwargs are fine


@pytest.mark.parametrize(
    ("path", "kwargs", "message"),
    [
        ("tests.losses.nothing_here:f", {}, "cannot import module 'tests.losses.nothing_here'"),
        ("tests.losses.custom_loss:nope", {}, "module 'tests.losses.custom_loss' has no attribute 'nope'"),
        ("tests.losses.custom_loss:CALLS", {}, "is not callable"),
        ("tests.losses.custom_loss:ScaledREAL", {}, "is a class (a LossSpec subclass goes by class_path"),
        ("tests.losses.custom_loss:positives", {}, "lacks logprobs, old_logprobs"),
        ("tests.losses.custom_loss:my_loss", {"clip": 1}, "has no hyper-parameter 'clip'; valid: tau"),
        ("tests.losses.custom_loss:", {}, "is not of the form 'package.module:function'"),
    ],
)
def test_a_path_that_names_no_loss_function_is_refused(path: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_loss(path, kwargs)


def test_a_path_names_a_function_of_ones_own() -> None:
    assert resolve_loss("tests.losses.custom_loss:my_loss", {"tau": 0.3}) == (custom_loss.my_loss, {"tau": 0.3})
    assert resolve_loss("real_lightning.losses:real_loss") == (real_loss, {})


def test_a_typed_loss_of_ones_own_by_class_path() -> None:
    spec = resolve_loss({"class_path": "tests.losses.custom_loss.ScaledREAL", "init_args": {"scale": 3.0}})[0]
    assert isinstance(spec, LossSpec) and spec.hparams == {"tau": 0.5, "scale": 3.0} and spec.name is None
    batch = make_batch(5)
    torch.testing.assert_close(spec(**batch.kwargs()).loss, 3 * real_loss(**batch.kwargs()).loss, rtol=0, atol=0)


# --- fit --help -------------------------------------------------------------------------------------------------


def _help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # the help is wrapped: compare words


def _as_yaml(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def test_fit_help_documents_the_typed_losses_with_defaults_and_docs(capsys) -> None:
    text = _help(capsys, "--help")
    for name, spec in LOSS_SPECS.items():
        defaults = ", ".join(f"{n}={_as_yaml(v)}" for n, v in loss_options(name).items())
        assert f"real_lightning.losses.{spec.__name__}({defaults})" in text
    assert "real_lightning.losses.REAL(tau=0.5)" in text and "GSPO(clip_low=0.0003, clip_high=0.0004" in text
    assert "tau: temperature τ > 0 of the scores s/τ (paper: 0.5)" in text  # the docstrings too
    for option in ("clip_low: ε_low >= 0", "clip_high: ε_high >= 0", "adv_eps: added to", "scale_adv_by_std: divide"):
        assert option in text
    assert "log_ratio_clamp: s_i is clamped above" in text
    assert "'package.module:function'" in text or '"package.module:function"' in text


def test_fit_help_of_one_typed_loss(capsys) -> None:
    text = _help(capsys, "--model.loss.help", "GSPO")
    assert "--model.loss.log_ratio_clamp LOG_RATIO_CLAMP s_i is clamped above" in text
    assert "(type: float, default: 0.0003)" in text
    assert "temperature τ > 0 of the scores" in _help(capsys, "--model.loss.help", "REAL")


def test_every_typed_loss_documents_every_hyper_parameter() -> None:
    from docstring_parser import parse

    for spec in LOSS_SPECS.values():
        documented = {p.arg_name for p in parse(spec.__doc__).params}  # as jsonargparse reads it (style AUTO)
        assert documented == set(inspect.signature(spec).parameters), spec.__name__


# --- a normaliser of the loss's own ------------------------------------------------------------------------------


def test_extra_counts_add_up_and_travel_in_one_tensor() -> None:
    mask = torch.ones(6, 3)
    rewards, groups = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1, 2, 2])
    whole = BatchCounts.of(mask, rewards, groups, custom_loss.positives)
    parts = [
        BatchCounts.of(mask[i : i + 2], rewards[i : i + 2], groups[i : i + 2], custom_loss.positives) for i in (0, 2, 4)
    ]
    assert float(whole.extra["positives"]) == 1.0 == float(sum(parts).extra["positives"])  # group 1: no contrast
    packed = whole.as_tensor()
    assert packed.tolist() == [3.0, 2.0, 6.0, 18.0, 1.0]
    back = BatchCounts.from_tensor(packed, ["positives"])
    assert torch.equal(back.as_tensor(), packed) and float(back.extra["positives"]) == 1.0
    assert BatchCounts.of(mask, rewards, groups).extra == {}  # the shipped losses: the four only
    with pytest.raises(ValueError, match="cannot add counts with extra"):
        whole + BatchCounts.of(mask, rewards, groups)


@pytest.fixture(scope="module")
def module64(policy_dir) -> RealPolicyModule:
    return RealPolicyModule(pretrained=policy_dir, dtype="float64")


def _grad(module: RealPolicyModule, batch, budget, loss_fn, **options):
    module.policy.zero_grad(set_to_none=True)
    result = _accumulate(module, batch, budget, loss_fn=loss_fn, **options)
    return torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None]), result


def test_a_loss_with_its_own_normaliser_gives_the_step_gradient_whatever_the_split(module64) -> None:
    batch = _rollouts(module64.policy.config.vocab_size)
    custom_loss.CALLS.clear()
    whole, _ = _grad(module64, batch, (None, None), custom_loss.my_loss)
    step_positives = custom_loss.CALLS[-1]["extra"]["positives"]
    assert float(step_positives) == float(custom_loss.positives(None, batch.rewards, batch.group_ids)["positives"]) > 1
    assert whole.abs().sum() > 0
    for budget in ((None, 4), (60, None)):
        split, _ = _grad(module64, batch, budget, custom_loss.my_loss)
        assert len(batch.micro_batch_rows(*budget)) > 1
        torch.testing.assert_close(split, whole, rtol=0, atol=1e-10)


def test_a_typed_loss_in_the_step_is_the_function_with_its_kwargs(module64) -> None:
    batch = _rollouts(module64.policy.config.vocab_size)
    typed, typed_result = _grad(module64, batch, (None, 4), REAL(tau=0.25))
    module64.policy.zero_grad(set_to_none=True)
    named_result = _accumulate_named(module64, batch)
    named = torch.cat([p.grad.flatten() for p in module64.policy.parameters() if p.grad is not None])
    assert torch.equal(typed, named)
    assert torch.equal(typed_result.metrics["train/loss"], named_result.metrics["train/loss"])


def _accumulate_named(module: RealPolicyModule, batch):
    from real_lightning.step.accumulate import accumulate_step

    return accumulate_step(
        batch,
        (None, 4),
        logprobs_fn=module.response_logprobs,
        loss_fn=LOSSES["real"],
        loss_kwargs={"tau": 0.25},
        backward=lambda value: value.backward(),
        device=torch.device("cpu"),
        world_size=1,
    )


# --- training from the command line -----------------------------------------------------------------------------


def _loss_yaml(root: Path, loss: object) -> tuple[str, str]:
    path = root / "loss.yaml"
    path.write_text(yaml.safe_dump({"model": {"loss": loss, "loss_kwargs": {}}}))  # {}: the quickstart's tau goes
    return ("-c", str(path))


@pytest.fixture(scope="module")
def typed_run(tmp_path_factory) -> tuple[Path, RealPolicyModule]:
    """Two steps of the tiny policy with ``model.loss: {class_path: REAL, init_args: {tau: 0.25}}`` from a YAML."""
    root = tmp_path_factory.mktemp("typed")
    before = _loss_yaml(root, {"class_path": REAL_PATH, "init_args": {"tau": 0.25}})
    cli = RealLightningCLI(
        RealPolicyModule, RolloutDataModule, save_config_kwargs={"overwrite": True}, args=_args(root, before=before)
    )
    assert cli.trainer.global_step == 2
    return root, cli.model


def test_a_typed_loss_from_yaml_trains_with_its_hyper_parameters(typed_run) -> None:
    root, module = typed_run
    assert module.loss_fn == REAL(tau=0.25) and module.loss_kwargs == {}
    batch = make_batch(6)
    used = module.loss_fn(**batch.kwargs(), **module.loss_kwargs).loss
    assert torch.equal(used, real_loss(**batch.kwargs(), tau=0.25).loss)
    assert not torch.allclose(used, real_loss(**batch.kwargs(), tau=0.5).loss)
    # the checkpoint holds plain data (weights_only) and rebuilds the same loss
    path = root / "job" / "pinned" / "checkpoints" / "last.ckpt"
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert hparams["loss"] == {"class_path": REAL_PATH, "init_args": {"tau": 0.25}}  # the configuration, as given
    rebuilt = RealPolicyModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})  # no _instantiator
    assert rebuilt.loss_fn == REAL(tau=0.25) and rebuilt.hparams["loss"] == hparams["loss"]


def test_a_changed_typed_loss_is_refused_on_resume(typed_run, tmp_path) -> None:
    import shutil

    source, _ = typed_run
    root = tmp_path / "run"
    shutil.copytree(source, root)
    for changed, shown in (
        ({"class_path": REAL_PATH, "init_args": {"tau": 0.3}}, "model.loss.init_args.tau: 0.25 → 0.3"),
        ("real", "model.loss: (unset) → 'real'"),
        ({"class_path": "real_lightning.losses.REALBCE", "init_args": {"tau": 0.25}}, "model.loss.class_path"),
    ):
        args = _args(root, "--trainer.max_steps", "4", "--ckpt_path", "last", before=_loss_yaml(root, changed))
        with pytest.raises(ResumeRefused) as error:
            main(args)
        assert shown in str(error.value) and "--resume_allow_changes '[model.loss]'" in str(error.value)
    same = _loss_yaml(root, {"class_path": REAL_PATH, "init_args": {"tau": 0.25}})
    main(_args(root, "--ckpt_path", "last", before=same))  # unchanged: resumes (nothing left to train)


def test_a_loss_function_of_ones_own_trains(tmp_path) -> None:
    custom_loss.CALLS.clear()
    main(_args(tmp_path, "--model.loss", "tests.losses.custom_loss:my_loss", "--model.loss_kwargs", "{tau: 0.25}"))
    assert len(custom_loss.CALLS) >= 2  # one call per micro-batch of each of the 2 steps
    assert all(call["tau"] == 0.25 and "positives" in call["extra"] for call in custom_loss.CALLS)

"""The configuration reference of the docs site, generated from the parser that ``real-lightning fit --help`` prints.

One source of truth: every option, type, default and description comes from the typed signatures and their
docstrings, as jsonargparse reads them for the CLI. Options typed by a class (``model.fsdp``, ``model.lora``, the
losses, the rollout engines, the entries of ``data.val``) get a table of that class's own options.

    python -m tools.config_reference > /tmp/configuration.md    # what docs/reference/configuration.md shows

The docs build calls :func:`configuration_reference` from ``docs/hooks/config_reference.py``.
"""

from __future__ import annotations

import argparse
import re
import typing
from dataclasses import dataclass
from typing import Any

GROUPS = {
    "model": "The policy, its optimizer and its loss (`RealPolicyModule`).",
    "data": "Datasets, rollouts, grading and validation (`RolloutDataModule`).",
    "pass_at_k": "Pass@k and the evaluation tables (`PassAtKLogger`, always on).",
    "health": "Run health (`RunHealthMonitor`, always on).",
}
"""The option groups of real-lightning, in the order the reference shows them; ``trainer`` is Lightning's."""

TOP_LEVEL = ("seed_everything", "validate_before_fit", "resume_allow_changes", "ckpt_path")
"""Top-level options of ``fit`` shown in the reference."""


@dataclass
class Option:
    """One option as the CLI knows it: dotted name, type, default and its docstring's description."""

    name: str
    type: str
    default: str
    help: str
    hint: Any = None


def cli_parser() -> argparse.ArgumentParser:
    """The root parser of :class:`~real_lightning.cli.RealLightningCLI` (subcommands ``fit``, ``validate``, ...),
    built without parsing or instantiating anything."""
    from real_lightning.cli import RealLightningCLI
    from real_lightning.data.datamodule import RolloutDataModule
    from real_lightning.module import RealPolicyModule

    class _Built(Exception):
        pass

    class _ParserOnly(RealLightningCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            raise _Built(parser)

    try:
        _ParserOnly(RealPolicyModule, RolloutDataModule, args=["fit"])
    except _Built as built:
        return built.args[0]
    raise RuntimeError("RealLightningCLI parsed its arguments before the parser could be read")


def fit_parser() -> argparse.ArgumentParser:
    """The ``fit`` subcommand's parser: what ``real-lightning fit --help`` prints."""
    return cli_parser()._subcommands_action._name_parser_map["fit"]


def _type_name(hint: Any) -> str:
    text = hint.__name__ if isinstance(hint, type) else str(hint)
    text = re.sub(r"\btyping\.", "", text)
    text = re.sub(r"\b(?:[a-z_][a-z0-9_]*\.)+([A-Z]\w*)", r"\1", text)  # module paths of classes
    return text.replace("NoneType", "None")


def _default(value: Any) -> str:
    if value == argparse.SUPPRESS:
        return ""
    return "null" if value is None else repr(value)


def _text(help_text: str | None) -> str:
    """A docstring description as one Markdown table cell."""
    text = " ".join((help_text or "").split())
    role = r":(?:class|func|meth|mod|data|attr):`~?([\w.]+)`"
    text = re.sub(role, lambda m: f"``{m.group(1).split('.')[-1]}``", text)
    text = text.replace("``", "`").replace("|", "\\|")
    return text


def options(parser: argparse.ArgumentParser, prefixes: tuple[str, ...]) -> list[Option]:
    """The typed options of ``parser`` whose names start with one of ``prefixes`` (help actions and groups left
    out; an option linked from another, such as ``data.tokenizer_from``, says which)."""
    found = []
    for action in parser._actions:
        kind = type(action).__name__
        if not action.dest.startswith(prefixes) or kind in ("_ActionHelpClassPath", "_ActionConfigLoad", "_HelpAction"):
            continue
        hint = getattr(action, "_typehint", action.type)
        help_text = action.help
        if kind == "ActionLink":
            help_text = f"{help_text} Set from `{_link_source(action)}`; not an option of its own."
        found.append(Option(action.dest, _type_name(hint), _default(action.default), _text(help_text), hint))
    return found


def _link_source(action: Any) -> str:
    sources = getattr(action, "source", None) or []
    names = [getattr(s[1] if isinstance(s, tuple) else s, "dest", str(s)) for s in sources]
    return ", ".join(names) or "another option"


def class_options(cls: type, prefix: str) -> list[Option]:
    """The options of ``cls``'s signature under ``prefix`` (e.g. ``model.lora``), as the CLI would add them."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(cls, prefix, fail_untyped=False)
    return options(parser, (prefix + ".",))


def table(rows: list[Option]) -> str:
    lines = ["| option | type | default | description |", "| --- | --- | --- | --- |"]
    for row in rows:
        default = f"`{row.default}`" if row.default else ""
        kind = row.type.replace("|", "\\|")
        lines.append(f"| `--{row.name}` | `{kind}` | {default} | {row.help} |")
    return "\n".join(lines)


def _class_typed(rows: list[Option]) -> list[tuple[str, type]]:
    """Options typed by one of our classes (or ``X | None``, or ``dict[str, X]``): name and class."""
    typed = []
    for row in rows:
        candidates = [row.hint, *typing.get_args(row.hint)]
        candidates += [a for c in candidates for a in typing.get_args(c)]
        for candidate in candidates:
            if isinstance(candidate, type) and candidate.__module__.startswith("real_lightning"):
                typed.append((row.name, candidate))
                break
    return typed


def _engines() -> list[type]:
    from real_lightning.rollout.hf import HFEngine
    from real_lightning.rollout.server import VLLMServerEngine
    from real_lightning.rollout.vllm import VLLMEngine

    return [HFEngine, VLLMEngine, VLLMServerEngine]


def configuration_reference() -> str:
    """The Markdown body of the configuration reference."""
    from real_lightning.losses.specs import LOSS_SPECS, LossSpec
    from real_lightning.rollout.engine import RolloutEngine

    parser = fit_parser()
    out: list[str] = []
    shown: dict[type, str] = {}
    top = [o for o in options(parser, TOP_LEVEL) if o.name in TOP_LEVEL]
    out += ["## Top level", "", table(top), ""]
    for group, about in GROUPS.items():
        rows = options(parser, (group + ".",))
        out += [f"## `{group}`", "", about, "", table(rows), ""]
        for name, cls in _class_typed(rows):
            if cls in shown:
                out += [f"### `{name}`", "", f"Takes the same classes as `{shown[cls]}` above.", ""]
                continue
            shown[cls] = name
            if cls is LossSpec:
                out += [f"### `{name}`: the typed losses", ""]
                out += ["`--model.loss NAME` takes a loss by name; `class_path` + `init_args` a typed loss:", ""]
                for spec in dict.fromkeys(LOSS_SPECS.values()):
                    path = f"real_lightning.losses.{spec.__name__}"
                    out += [f"#### `{path}`", "", table(class_options(spec, "init_args")) or "", ""]
            elif cls is RolloutEngine:
                out += [f"### `{name}`: the rollout engines", ""]
                for engine in _engines():
                    path = f"{engine.__module__}.{engine.__name__}"
                    out += [f"#### `{path}`", "", table(class_options(engine, "init_args")), ""]
            else:
                title = f"`{name}` entries" if name == "data.val" else f"`{name}`"
                out += [f"### {title}: `{cls.__name__}`", "", table(class_options(cls, name)), ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(configuration_reference())

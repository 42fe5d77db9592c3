"""The documentation's code blocks are real: every ``real-lightning fit``/``validate`` command in README.md and docs/
parses with the CLI's own parser (its config files exist, its options are real), every YAML config fragment parses as
a config on top of the quickstart's, every page's ``python`` blocks run, and the generated configuration reference
lists every option ``fit --help`` prints. The paper's CPU evaluation command of docs/guides/paper.md runs in
tests/test_evaluation.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tools.config_reference import cli_parser, configuration_reference, fit_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
CONFIG_GROUPS = {"trainer", "model", "data", "pass_at_k", "health", "seed_everything", "ckpt_path", "optimizer"}
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
PAPER_CPU_EVAL = "real-lightning validate -c configs/paper/eval.yaml --model.pretrained builtin:tiny"


def blocks(lang: str) -> list[tuple[str, str]]:
    """``(page: line, body)`` of every fenced block of ``lang`` in the README and the docs."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group("lang") == lang:
                body = "\n".join(line.removeprefix(match.group("indent")) for line in match.group("body").splitlines())
                found.append((f"{page.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}", body))
    return found


def cli_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every ``real-lightning fit|validate`` command in a bash block (after ``srun``,
    ``torchrun`` or an environment assignment too), continuation lines joined, comments dropped."""
    commands = []
    for where, body in blocks("bash") + blocks("shell"):
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.split(" # ")[0].strip()
            match = re.search(r"(?:^|\s)real-lightning\s+(fit|validate)\b(.*)$", line)
            if match and not line.startswith("#"):
                commands.append((f"{where}: {line[:60]}", [match.group(1), *shlex.split(match.group(2))]))
    return commands


COMMANDS = cli_commands()


def documented_command(start: str) -> list[str]:
    """The argv (after ``real-lightning``) of the one documented command that starts with ``start``."""
    (argv,) = [argv for _, argv in COMMANDS if " ".join(["real-lightning", *argv]).startswith(start)]
    return argv


def config_fragments() -> list[tuple[str, str]]:
    """``(where, text)`` of every YAML document in a yaml block whose top-level keys include a config group (a
    block may hold several documents, ``---`` apart); a block that is not valid YAML is returned as it is, to fail."""
    fragments = []
    for where, body in blocks("yaml"):
        if "--8<--" in body:  # a shipped config, included whole (mkdocs checks the path)
            continue
        for document in re.split(r"^---\s*$", body, flags=re.M):
            try:
                keys = yaml.safe_load(document)
            except yaml.YAMLError:
                fragments.append((where, document))
                continue
            if isinstance(keys, dict) and set(keys) & CONFIG_GROUPS:
                fragments.append((where, document))
    return fragments


FRAGMENTS = config_fragments()


@pytest.fixture(scope="module")
def parser():
    return cli_parser()


def test_the_docs_have_commands_and_fragments_to_check() -> None:
    assert len(COMMANDS) >= 10 and len(FRAGMENTS) >= 3, (len(COMMANDS), len(FRAGMENTS))
    assert documented_command(PAPER_CPU_EVAL)


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses(where: str, argv: list[str], parser, monkeypatch, capsys) -> None:
    monkeypatch.chdir(REPO)  # the docs give config paths from the repository's root
    try:
        parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `real-lightning {shlex.join(argv)}` does not parse: {capsys.readouterr().err[-800:]}")


@pytest.mark.parametrize(("where", "body"), FRAGMENTS, ids=[w for w, _ in FRAGMENTS])
def test_every_config_fragment_parses_over_the_quickstart(where: str, body: str, parser, tmp_path, capsys) -> None:
    fragment = tmp_path / "fragment.yaml"
    fragment.write_text(body)
    argv = ["fit", "-c", str(REPO / "configs" / "quickstart.yaml"), "-c", str(fragment)]
    try:
        parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: the YAML block is not a valid config fragment: {capsys.readouterr().err[-800:]}\n{body}")


def test_the_configuration_reference_lists_every_option_fit_help_prints() -> None:
    """One source of truth: each option of our groups, and its docstring text, appear in the generated page."""
    reference = configuration_reference()
    actions = fit_parser()._actions
    options = [a for a in actions if a.dest.startswith(("model.", "data.", "health.", "pass_at_k."))]
    options = [a for a in options if a.help and type(a).__name__ in ("ActionTypeHint", "ActionLink")]
    assert len(options) > 60
    for action in options:
        assert f"`--{action.dest}`" in reference, action.dest
    timeout = next(a for a in actions if a.dest == "data.verifier.timeout_s")
    assert " ".join(timeout.help.split()) in reference
    for nested in ("--model.lora.r", "--data.val.source", "--init_args.tau", "--init_args.gpu_memory_utilization"):
        assert f"`{nested}`" in reference, nested


PYTHON_PAGES = sorted({where.split(":")[0] for where, _ in blocks("python") if not where.startswith("docs/research/")})


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_the_python_blocks_of_a_page_run_in_order(page: str, tmp_path, monkeypatch) -> None:
    """Each page's ``python`` blocks, run top to bottom in one namespace (as a reader would paste them); the notes
    under docs/research/ quote other projects' code and are not ours to run."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_example"}
    for where, body in blocks("python"):
        if where.split(":")[0] == page:
            exec(compile(body, where, "exec"), namespace)  # the documentation's own examples

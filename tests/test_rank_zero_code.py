"""A cheap guard beside the traced 2-process runs (tests/pipeline/test_collectives.py): the package reads
``trainer.log_dir`` — a broadcast under multi-process strategies — in one place only, the helper every rank
calls in ``setup`` (:func:`real_lightning.callbacks.log_folder.resolve_log_folder`)."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "real_lightning"


def test_trainer_log_dir_is_read_only_by_the_helper_every_rank_calls() -> None:
    uses = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"(?<!`)\btrainer\.log_dir\b(?!`)", line.split("#")[0])  # not ``trainer.log_dir`` in docs
    ]
    assert [u.split(":")[0] for u in uses] == ["callbacks/log_folder.py"], uses

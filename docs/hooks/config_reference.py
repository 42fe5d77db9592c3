"""MkDocs hook: fills docs/reference/configuration.md from the CLI's own parser (tools/config_reference.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- generated: configuration reference -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    root = str(Path(config["config_file_path"]).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tools.config_reference import configuration_reference

    return markdown.replace(MARKER, configuration_reference())

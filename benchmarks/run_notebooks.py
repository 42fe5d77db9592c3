"""Execute every notebook in notebooks/ top to bottom (used by ``tox -e notebooks``); fails on any error.

python benchmarks/run_notebooks.py [--timeout 600]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        start = time.perf_counter()
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(
            notebook, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
        print(f"{path.relative_to(ROOT)}: executed {len(notebook.cells)} cells in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()

"""Execute every notebook in notebooks/ top to bottom (used by ``tox -e notebooks``); fails on any error.

python -m tools.run_notebooks [--timeout 600]
"""

from __future__ import annotations

import argparse
import base64
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--save-images", type=Path, help="also write every PNG output here (<notebook>_<cell>.png)")
    args = parser.parse_args()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        start = time.perf_counter()
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(
            notebook, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
        print(f"{path.relative_to(ROOT)}: executed {len(notebook.cells)} cells in {time.perf_counter() - start:.1f}s")
        if args.save_images:
            for written in save_images(notebook, path.stem, args.save_images):
                print(f"  wrote {written}")


def save_images(notebook: nbformat.NotebookNode, stem: str, folder: Path) -> list[Path]:
    """Write the PNG outputs of executed cells as ``<stem>_cell<NN>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get("image/png")
            if data:
                path = folder / f"{stem}_cell{number:02d}.png"
                path.write_bytes(base64.b64decode(data))
                written.append(path)
    return written


if __name__ == "__main__":
    main()

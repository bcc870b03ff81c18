"""Strip outputs, execution counts and saved widget state from notebooks, so they are committed clean.

    python scripts/strip_notebooks.py                 # strip every notebooks/*.ipynb in place
    python scripts/strip_notebooks.py --check         # exit 1 and name the notebooks that are not clean
    python scripts/strip_notebooks.py path.ipynb ...  # only these

To keep an executed copy, run it elsewhere instead:
    jupyter nbconvert --execute --to notebook --output /tmp/01.ipynb notebooks/01_masks_and_weights.ipynb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
#: Notebook-level metadata that only an executed or edited copy carries.
VOLATILE_METADATA = ("widgets", "execution")


def problems(nb) -> list[str]:
    """What would make a notebook unclean: outputs, execution counts, execution timings, widget state."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {i} has outputs")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i} has an execution count")
        if "execution" in cell.get("metadata", {}):
            found.append(f"cell {i} has execution timings")
    found += [f"notebook metadata has {key!r}" for key in VOLATILE_METADATA if key in nb.metadata]
    return found


def strip(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.get("metadata", {}).pop("execution", None)
    for key in VOLATILE_METADATA:
        nb.metadata.pop(key, None)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if any notebook is not clean")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        found = problems(nb)
        if not found:
            continue
        dirty += 1
        if args.check:
            print(f"{path}: " + "; ".join(found))
        else:
            nbformat.write(strip(nb), path)
            print(f"stripped {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())

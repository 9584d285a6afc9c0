"""Write the demo's measured cells into data/demo-results/ (extras/shipped.py says what goes in and why).

  python scripts/ship_results.py --results results --cells 'minilm-l6__*'

Every finished cell whose folder name matches one of --cells is copied without its model, with the first-stage
folders of the store, and MANIFEST.json is rewritten (sha256 of each file, the kit's commit, each cell's device
and precision). The folder must stay under 30 MB.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
from extras import shipped  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results", help="results store to read the cells from")
    parser.add_argument("--cells", nargs="+", required=True, help="glob patterns of cell folder names")
    parser.add_argument("--to", default=str(shipped.SHIPPED), help="folder to write (default data/demo-results)")
    args = parser.parse_args()
    cells = sorted({c for pattern in args.cells for c in (Path(args.results) / "cells").glob(pattern) if c.is_dir()})
    if not cells:
        raise common.KitError(f"--cells {' '.join(args.cells)}: no cell folder matches in {args.results}/cells")
    manifest = shipped.export(Path(args.results), cells, Path(args.to))
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"{len(manifest['cells'])} cell(s), {len(manifest['files'])} files, {size / 2**20:.2f} MB in {args.to}")


if __name__ == "__main__":
    try:
        main()
    except common.KitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

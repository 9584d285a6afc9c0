"""What importing an experiment script loads of the kit: each kit module with its lines, then the count and total.

    python scripts/core_size.py exp_rq1_objectives.py

The README's "The kit's files" quotes what it prints; tests/test_copy.py checks that no file of extras/ is among
them.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kit_modules(script: str) -> dict[str, int]:
    """{module name: lines} of the kit's modules loaded by importing `script` (the script itself included)."""
    sys.path.insert(0, str(ROOT))
    importlib.import_module(Path(script).stem)
    loaded = {}
    for name, module in list(sys.modules.items()):
        path = Path(getattr(module, "__file__", None) or "/").resolve()
        if not name.startswith("__") and path.is_file() and path.parent in (ROOT, ROOT / "extras"):
            loaded[name] = len(path.read_text().splitlines())
    return dict(sorted(loaded.items()))


def main(script: str) -> None:
    loaded = kit_modules(script)
    stem = Path(script).stem
    for name, lines in loaded.items():
        print(f"{name:<28} {lines:>5}" + ("  (the script)" if name == stem else ""))
    core = {name: lines for name, lines in loaded.items() if name != stem}
    print(f"{len(core)} kit modules besides the script: {sum(core.values()):,} lines; with the script "
          f"{sum(loaded.values()):,}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (ROOT / sys.argv[1]).is_file():
        print("error: name one experiment script, e.g. python scripts/core_size.py exp_rq1_objectives.py",
              file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])

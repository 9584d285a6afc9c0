"""The benchmark scripts start from a clean clone; nothing here times anything (benchmarks print, tests assert)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))


def run(script: Path, *flags: str) -> str:
    result = subprocess.run([sys.executable, str(script), *flags], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_bench_script_parses_its_arguments(script):
    first_line = next(line for line in script.read_text().split('"""')[1].splitlines() if line.strip())
    assert first_line.strip() in " ".join(run(script, "--help").split())


def test_bench_cpu_mfu_prints_every_row_with_a_share_of_the_matmul_reference():
    out = run(ROOT / "bench" / "bench_cpu_mfu.py", "--backbone", "tiny-bert", "--pairs", "16", "--batch-size", "8",
              "--train-batch", "4", "--train-steps", "1", "--rounds", "1", "--threads", "1")
    rows = {cells[1].strip(): [c.strip() for c in cells[2:5]] for cells in
            (line.split("|") for line in out.splitlines() if line.startswith("| ") and "%" in line)}
    model_rows = ["forward, full-length random tokens", "re-rank: kit score_pairs (real pairs)",
                  "train: step (bce, clip, fused AdamW)"]
    assert set(rows) >= {"matmul fp32 2048 x 2048 x 2048", *model_rows}
    assert rows["matmul fp32 2048 x 2048 x 2048"][2] == "100%"
    for name in model_rows:  # pairs/s were timed, GFLOP/s and the share follow from them
        pairs_per_s, gflops, share = rows[name]
        assert float(pairs_per_s) > 0 and share.endswith("%"), (name, rows[name])

"""The overhead benchmark runs and reports ratios against stock TRL measured in the same run."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_overhead_benchmark_reports_ratios_against_stock_trl(tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--quick", "--rounds", "1", "--output_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line for line in (tmp_path / "overhead.md").read_text().splitlines() if line.startswith("| tiny")]
    assert [row.split("|")[2:4] for row in rows] == [
        [" stock TRL ", " `sigmoid` "], [" trl-robust ", " `sigmoid` "], [" trl-robust ", " `ropo` "],
        [" trl-robust ", " `sympo_sigmoid` "], [" trl-robust ", " `sympo_ramp` "],
    ]
    speed_ratio, memory_ratio = float(rows[0].split("|")[5]), float(rows[0].split("|")[7])
    assert speed_ratio == memory_ratio == 1.0  # the baseline against itself
    for row in rows[1:]:
        assert 0.2 < float(row.split("|")[5]) < 5  # a real measurement, not a placeholder

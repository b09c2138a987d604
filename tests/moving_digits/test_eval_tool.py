"""tools/eval_digits.py end to end: baselines and the shipped teacher, one seed, JSON per seed."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_eval_tool_writes_the_table_and_per_seed_json(tmp_path):
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "tools/eval_digits.py", "--baselines", "--model", "assets/moving_digits/teacher",
         "--name", "teacher", "--steps", "2", "--seeds", "4", "--reference", "300", "--threads", "1",
         "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"real test videos", "real videos, shuffled prompts", "gaussian noise",
                         "teacher, RF Euler 2 steps, CFG 2.5"}
    assert "| teacher, RF Euler 2 steps, CFG 2.5 | 4 |" in result.stdout
    real, noise = rows["real test videos"], rows["gaussian noise"]
    assert real["seeds"] == [4] and len(real["fd"]) == 1
    assert real["joint_acc"][0] > 0.85 and noise["fd"][0] > 10 * real["fd"][0]

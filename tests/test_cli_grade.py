"""`harness grade FILE --task ...` prints one JSON object with n, correct, accuracy, unparsed."""

import json
import subprocess
import sys


def test_grade_cli(tmp_path):
    path = tmp_path / "preds.jsonl"
    lines = [
        {"prediction": "So 3 + 4 = 7. The answer is: 7", "answer": "7"},
        {"prediction": "#### 1,000", "answer": "She has 1000.\n#### 1000"},
        {"prediction": "I cannot tell.", "answer": "5"},
        {"prediction": "The answer is: 6", "answer": "5"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    res = subprocess.run([sys.executable, "-m", "harness.cli", "grade", str(path), "--task", "gsm8k"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"n": 4, "correct": 2, "accuracy": 0.5, "unparsed": 1}


def test_grade_cli_names_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prediction": "7", "answer": "7"}\n{"prediction": "7"}\n')
    res = subprocess.run([sys.executable, "-m", "harness.cli", "grade", str(path), "--task", "gsm8k"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "bad.jsonl:2" in res.stderr and "answer" in res.stderr

"""Data sources: bundled files, local jsonl/parquet, skipped rows counted with their place and reason."""

import json

import pytest

from harness.config.recipe import DataSource
from harness.data.records import load_source
from harness.errors import DataError


def test_bundled_gsm8k_test_loads_all_rows():
    loaded = load_source(DataSource(source="bundled:gsm8k_test", format="gsm8k"))
    assert len(loaded.records) == 1319 and loaded.skipped == []
    first = loaded.records[0]
    assert first.answer == "18" and first.solution.endswith("#### 18") and first.task == "gsm8k"


def test_bundled_math500_uses_answer_field():
    loaded = load_source(DataSource(source="bundled:math500_test", format="math", task="math"))
    assert len(loaded.records) == 500
    assert loaded.records[0].answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert loaded.records[0].id.startswith("test/")


def test_rows_without_answer_are_skipped_and_counted(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [
        {"question": "1+1?", "answer": "1 + 1 = 2\n#### 2"},
        {"question": "no gold here", "answer": "I do not know"},
        {"question": "", "answer": "#### 3"},
        {"query": "What is 2+5?", "response": "2+5=7. The answer is: 7", "type": "GSM_Rephrased"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_source(DataSource(source=str(path), format="gsm8k"))
    assert [r.answer for r in loaded.records] == ["2"]
    assert len(loaded.skipped) == 3
    assert "row 2: no usable gold answer" in loaded.skipped[0] and "row 3: no question" in loaded.skipped[1]
    meta = load_source(DataSource(source=str(path), format="metamath"))
    assert [(r.question, r.answer, r.task) for r in meta.records] == [("What is 2+5?", "7", "gsm8k")]


def test_offset_limit_shuffle(tmp_path):
    src = dict(source="bundled:arith", format="gsm8k")
    head = load_source(DataSource(**src, offset=10, limit=5)).records
    assert [r.id for r in head] == [f"arith-{i}" for i in range(10, 15)]
    shuffled = load_source(DataSource(**src, limit=5, shuffle_seed=1)).records
    assert [r.id for r in shuffled] == [r.id for r in load_source(DataSource(**src, limit=5, shuffle_seed=1)).records]
    # the whole file is shuffled before the limit: not just the first five rows reordered
    assert not {r.id for r in shuffled} <= {f"arith-{i}" for i in range(5)}


def test_parquet_and_errors(tmp_path):
    import pandas

    path = tmp_path / "d.parquet"
    pandas.DataFrame([{"problem": "x?", "solution": r"so \boxed{4}"}]).to_parquet(path)
    assert load_source(DataSource(source=str(path), format="math", task="math")).records[0].answer == "4"
    with pytest.raises(DataError, match="no bundled file"):
        load_source(DataSource(source="bundled:nope", format="gsm8k"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        load_source(DataSource(source=str(bad), format="gsm8k"))


def test_a_source_with_no_usable_row_is_an_error_that_says_why(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no usable row out of 0"):
        load_source(DataSource(source=str(empty), format="gsm8k"))
    odd = tmp_path / "odd.jsonl"
    odd.write_text('[1, 2]\n{"question": "q", "answer": "no number here"}\n')
    with pytest.raises(DataError, match=r"no usable row out of 2 \(.*row 1: a list, not an object.*row 2: no usable"):
        load_source(DataSource(source=str(odd), format="gsm8k"))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"question": "caf\u00e9", "answer": "#### 1"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.jsonl:1: not UTF-8 text"):
        load_source(DataSource(source=str(latin), format="gsm8k"))

import json
from pathlib import Path

import pytest

from bot.learning.clean import Record
from bot.learning.records import RecordFileError, read_records, write_records

RECORDS = [
    Record("退款多久到账？", "1-3 个工作日。", ""),
    Record("发票怎么开", "在“我的-订单”申请开票。", "页面：订单"),
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_round_trip_in_every_format(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    assert write_records(path, RECORDS) == 2
    assert list(read_records(path)) == RECORDS


def test_json_with_a_records_key_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"records": [{"query": "q", "response": "r"}]}).encode())
    assert list(read_records(path)) == [Record("q", "r", "")]


def test_bad_lines_and_fields_become_reasons_not_crashes(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = ['{"query": "q", "response": "r"}', "{not json", '["a list"]', '{"query": 5, "response": "r"}',
             "[" * 5000 + "]" * 5000, '{"query": "坏\\ud800", "response": "r"}']
    path.write_text("\n".join(lines), encoding="utf-8")
    got = list(read_records(path))
    assert got[0] == Record("q", "r", "")
    assert got[1:5] == ["unreadable JSON line", "not an object", "query is not text", "unreadable JSON line"]
    assert got[5] == Record("坏\ufffd", "r", "")


def test_csv_needs_its_header_and_refuses_extra_cells(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("query,response\n你好,您好\n多,了,一格\n", encoding="utf-8")
    assert list(read_records(path)) == [Record("你好", "您好", ""), "CSV row with extra cells"]
    path.write_text("q,a\n你好,您好\n", encoding="utf-8")
    with pytest.raises(RecordFileError, match="header"):
        list(read_records(path))


def test_whole_file_errors_name_the_file_not_the_content(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(RecordFileError, match="unknown format"):
        list(read_records(tmp_path / "data.txt"))
    (tmp_path / "secret.json").write_text('{"query": "手机 13812345678"')
    with pytest.raises(RecordFileError) as err:
        list(read_records(tmp_path / "secret.json"))
    assert "13812345678" not in str(err.value)

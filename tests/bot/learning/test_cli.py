import json
import subprocess
import sys
from pathlib import Path

from bot.config import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", "data", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_data_clean_writes_clean_records_and_says_what_it_dropped(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = [
        {"query": "我的手机 13812345678，退款多久到账？", "response": "<p>审核通过后 <b>1-3</b> 个工作日！</p>"},
        {"query": "", "response": "没问题"},
        {"query": "我的手机 13812345678，退款多久到账?", "response": "审核通过后 1-3 个工作日！"},
    ]
    src.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n{oops\n", encoding="utf-8")
    out = tmp_path / "out.json"
    done = _run("clean", str(src), str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text(encoding="utf-8")) == [
        {"query": "我的手机 [手机号]，退款多久到账？", "response": "审核通过后 1-3 个工作日！", "context": ""}
    ]
    assert "records read: 4; kept: 1; dropped: 3" in done.stdout
    assert "dropped 1 × duplicate (e.g. #3)" in done.stdout
    assert "dropped 1 × unreadable JSON line (e.g. #4)" in done.stdout
    assert "13812345678" not in done.stdout + done.stderr


def test_data_clean_refuses_an_unreadable_file_with_a_clear_message(tmp_path: Path) -> None:
    done = _run("clean", str(tmp_path / "missing.jsonl"), str(tmp_path / "out.jsonl"))
    assert done.returncode == 2
    assert "No such file" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "in.xml").write_text("<a/>")
    done = _run("clean", str(tmp_path / "in.xml"), str(tmp_path / "out.jsonl"))
    assert done.returncode == 2 and "unknown format .xml" in done.stderr

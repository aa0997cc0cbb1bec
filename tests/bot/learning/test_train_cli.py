"""``python -m bot data clean`` -> ``train`` -> ``eval`` (and ``--compare``) end to end, and clean refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ROOT

pytest.importorskip("trl")
pytestmark = pytest.mark.slow  # builds and trains the tiny model
SYSTEM = "你是一名专业、礼貌的客服助手。"  # the tiny model's own system prompt


def _bot(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "BOT__ENGINE__SYSTEM_PROMPT": SYSTEM}
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", adapters=())


def test_clean_train_eval_compare(base: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw.jsonl"
    rows = [{"query": "周末发货吗？", "response": "<p>周末照常发货。</p>"},
            {"query": "积分怎么用？", "response": "积分可以抵扣现金。", "context": "会员页"},
            {"query": "有赠品吗？", "response": "下单即送保温杯一个。"},
            {"query": "发票在哪里？", "response": "发票随包裹寄出。"},
            {"query": "", "response": "空"}]
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    data = tmp_path / "clean.jsonl"
    assert _bot("data", "clean", str(raw), str(data)).returncode == 0
    out = tmp_path / "adapter"
    done = _bot("train", "--base", str(base), "--data", str(data), "--eval-data", str(data), "--out", str(out),
                "--epochs", "2", "--batch-size", "2", "--lr", "1e-2", "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained 4 steps" in done.stdout and "eval loss per epoch:" in done.stdout
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    assert card["parameters"]["r"] == 16 and card["parameters"]["alpha"] == 32 and card["data"][0]["file"] == data.name
    assert len(card["metrics"]["eval_loss_per_epoch"]) == 2

    saved = tmp_path / "tuned.json"
    done = _bot("eval", "--base", str(base), "--adapter", str(out), "--data", str(data), "--save", str(saved),
                "--max-new-tokens", "16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "BLEU (zh)" in done.stdout and "ROUGE-L" in done.stdout and "FAQ hit rate" in done.stdout
    assert json.loads(saved.read_text(encoding="utf-8"))["label"] == "adapter"

    report = tmp_path / "cmp.html"
    done = _bot("eval", "--base", str(base), "--data", str(data), "--compare", "base", str(saved),
                "--report", str(report), "--no-faq", "--max-new-tokens", "16")
    assert done.returncode == 0, done.stderr[-2000:]
    page = report.read_text(encoding="utf-8")
    assert "<img" in page and "adapter" in page and "周末发货吗？" in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--base", "/nonexistent", "--data", "d.jsonl", "--out", "o"], "not a model directory"),
        (["train", "--base", ".", "--data", "d.jsonl", "--out", "o", "--lr", "-1"], "expected a positive number"),
        (["train", "--base", ".", "--data", "d.jsonl", "--out", "o", "--epochs", "x"], "expected a positive number"),
        (["eval", "--base", "/nonexistent", "--data", "d.jsonl"], "not a model directory"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = _bot(*args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_empty_data_is_refused(base: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    done = _bot("train", "--base", str(base), "--data", str(empty), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "no records with a query and a response" in done.stderr
    assert "Traceback" not in done.stderr

"""Intent labelling through Label Studio: unsure archived questions go out as import tasks with a matching
labeling config, a realistic JSON export comes back as intent examples, and the recognizer learns from them."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.archive.writer import ArchiveWriter
from bot.config import ROOT, ArchiveConfig
from bot.dialogue.intent import IntentRecognizer
from bot.metrics import Metrics
from tests.bot.archive.helpers import PHONE

DAY = dt.datetime(2025, 3, 10, 10, 0, tzinfo=dt.UTC)
INTENTS = ROOT / "config" / "intents.yaml"
CLARIFY = "抱歉，我不太确定您想咨询什么。请问是以下哪一类问题？"  # config/dialogue.yaml texts.clarify.zh


def turn(i: int, question: str, answer: str, *, intent: str | None, source: str = "faq", **over: Any) -> dict:
    return {"created_at": DAY + dt.timedelta(minutes=i), "channel": "web", "tenant": "", "conversation": f"web::{i}",
            "event_id": f"e{i}", "kind": "message", "question": question, "answer": answer, "replies": 1,
            "source": source, "outcome": "ok", "intent": intent, **over}


@pytest.fixture
async def archive_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    writer = ArchiveWriter(ArchiveConfig(url=url, retention_days=0), Metrics(), ROOT)
    for row in (
        turn(1, "积分什么时候过期", f"{CLARIFY}\n\n1. 订单", intent="other", source="dialogue"),
        turn(2, "积分什么时候过期？", f"{CLARIFY}\n\n1. 订单", intent="other", source="dialogue"),  # same, normalised
        turn(3, f"我的手机{PHONE}收不到验证码", "请检查短信拦截。", intent=None, source="llm"),
        turn(4, "这个颜色和图片不一样", "抱歉，我没能理解。", intent="tech_fault", source="unknown"),
        turn(5, "怎么退货", "在订单页申请售后。", intent="refund"),  # sure of it: not exported
        turn(6, "我家猫把充电器咬坏了", "可以申请保修。", intent="refund", source="llm"),  # sure by the archive only
    ):
        assert writer.record("turns", row)
    await writer.flush()
    await writer.close()
    return url


def _bot(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env={**os.environ, **env})


def test_label_export_writes_unsure_questions_and_a_matching_config(archive_url: str, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    done = _bot("data", "label-export", str(out), BOT__ARCHIVE__URL=archive_url)
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text(encoding="utf-8"))
    assert [t["data"]["text"] for t in found] == [
        "积分什么时候过期", "我的手机[手机号]收不到验证码", "这个颜色和图片不一样"]
    assert [t["meta"]["reason"] for t in found] == ["clarifying question", "no intent", "source unknown"]
    assert PHONE not in out.read_text(encoding="utf-8")
    config = ET.parse(tmp_path / "tasks.config.xml").getroot()
    choices = config.find("Choices")
    assert choices is not None and choices.get("name") == "intent" and choices.get("toName") == "text"
    assert config.find("Text").get("value") == "$text"  # type: ignore[union-attr]
    assert [c.get("value") for c in choices] == [s.name for s in IntentRecognizer.load(INTENTS).specs]

    # Today's classifier is unsure of the cat too (0.23 < 0.5); --max caps the tasks.
    done = _bot("data", "label-export", str(out), "--confidence-below", "0.5", BOT__ARCHIVE__URL=archive_url)
    assert done.returncode == 0, done.stderr
    texts = [t["data"]["text"] for t in json.loads(out.read_text(encoding="utf-8"))]
    assert "我家猫把充电器咬坏了" in texts and "怎么退货" not in texts
    done = _bot("data", "label-export", str(out), "--max", "1", BOT__ARCHIVE__URL=archive_url)
    assert done.returncode == 0 and len(json.loads(out.read_text(encoding="utf-8"))) == 1
    done = _bot("data", "label-export", str(out), "--confidence-below", "2", BOT__ARCHIVE__URL=archive_url)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def annotation(ident: int, choices: list[str], when: str, *, cancelled: bool = False) -> dict[str, Any]:
    """One annotation as Label Studio 1.x exports it (JSON export, "Choices" control named intent)."""
    result = [] if not choices else [{
        "value": {"choices": choices}, "id": f"r{ident}", "from_name": "intent", "to_name": "text",
        "type": "choices", "origin": "manual"}]
    return {"id": ident, "completed_by": 1, "result": result, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": when, "updated_at": when, "draft_created_at": None, "lead_time": 4.2, "prediction": {},
            "result_count": len(result), "unique_id": f"u{ident}", "import_id": None, "last_action": None,
            "task": 1, "project": 3, "updated_by": 1, "parent_prediction": None, "parent_annotation": None,
            "last_created_by": None}


def task(ident: int, text: str, annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": ident, "annotations": annotations, "file_upload": "tasks.json", "drafts": [], "predictions": [],
            "data": {"text": text}, "meta": {"archive_id": ident, "reason": "no intent"},
            "created_at": "2025-03-11T02:00:00.000000Z", "updated_at": "2025-03-11T03:00:00.000000Z",
            "inner_id": ident, "total_annotations": len(annotations), "cancelled_annotations": 0,
            "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0,
            "last_comment_updated_at": None, "project": 3, "updated_by": 1, "comment_authors": []}


EXPORT = [
    task(1, "积分什么时候过期", [  # relabelled: the later annotation counts
        annotation(11, ["other"], "2025-03-11T03:00:00.000000Z"),
        annotation(12, ["account"], "2025-03-11T04:30:00.000000Z"),
    ]),
    task(2, "这个颜色和图片不一样", [annotation(21, ["complaint"], "2025-03-11T03:10:00.000000Z"),
                                    annotation(22, ["refund"], "2025-03-11T05:00:00.000000Z", cancelled=True)]),
    task(3, f"手机{PHONE}收不到验证码", [annotation(31, ["account"], "2025-03-11T03:20:00.000000Z")]),
    task(4, "快递能送到山里吗", [annotation(41, ["shipping"], "2025-03-11T03:30:00.000000Z")]),  # no such intent
    task(5, "算了", [annotation(51, ["goodbye"], "2025-03-11T03:40:00.000000Z", cancelled=True)]),
    task(6, "还没人标", []),
    task(7, "我要找人工", [annotation(71, ["human"], "2025-03-11T03:50:00.000000Z")]),  # in intents.yaml already
    task(8, "空的", [annotation(81, [], "2025-03-11T03:55:00.000000Z")]),
]


def test_label_import_writes_known_labels_and_the_recognizer_learns_them(tmp_path: Path) -> None:
    before = IntentRecognizer.load(INTENTS)
    assert before.recognize("积分什么时候过期").name != "account"
    assert before.recognize("这个颜色和图片不一样").name != "complaint"

    export = tmp_path / "project-3-at-2025-03-11.json"
    export.write_text(json.dumps(EXPORT, ensure_ascii=False), encoding="utf-8")
    labelled = tmp_path / "intents_labelled.yaml"
    labelled.write_text(yaml.safe_dump({"billing": ["开专票要什么资料"]}, allow_unicode=True), encoding="utf-8")
    done = _bot("data", "label-import", str(export), BOT__DIALOGUE__INTENTS_LABELLED_PATH=str(labelled))
    assert done.returncode == 0, done.stderr
    assert "tasks read: 8; labelled: 4; new examples: 3" in done.stdout
    assert "unknown intent labels (not in config/intents.yaml), skipped: shipping ×1" in done.stdout
    assert "skipped 1 × cancelled" in done.stdout and "skipped 2 × not annotated" in done.stdout
    assert "skipped 1 × already an example in config/intents.yaml" in done.stdout
    assert PHONE not in done.stdout + labelled.read_text(encoding="utf-8")
    assert yaml.safe_load(labelled.read_text(encoding="utf-8")) == {
        "account": ["积分什么时候过期", "手机[手机号]收不到验证码"],
        "billing": ["开专票要什么资料"],  # kept from before
        "complaint": ["这个颜色和图片不一样"],
    }
    # Importing again adds nothing (merged, de-duplicated).
    done = _bot("data", "label-import", str(export), BOT__DIALOGUE__INTENTS_LABELLED_PATH=str(labelled))
    assert done.returncode == 0 and "new examples: 0" in done.stdout and "skipped 3 × already labelled" in done.stdout

    after = IntentRecognizer.load(INTENTS, labelled)
    assert after.recognize("积分什么时候过期").name == "account"
    assert after.recognize("这个颜色和图片不一样").name == "complaint"
    assert sum(len(s.examples) for s in after.specs) == sum(len(s.examples) for s in before.specs) + 4

    # intent-eval (like build_manager) trains on the labelled file named by dialogue.intents_labelled_path.
    done = _bot("intent-eval", BOT__DIALOGUE__INTENTS_LABELLED_PATH=str(labelled))
    base = _bot("intent-eval", BOT__DIALOGUE__INTENTS_LABELLED_PATH=str(tmp_path / "none.yaml"))
    examples = sum(len(s.examples) for s in before.specs)
    assert f"training examples: {examples + 4};" in done.stdout and f"training examples: {examples};" in base.stdout


def test_label_import_refuses_what_is_no_export(tmp_path: Path) -> None:
    labelled = str(tmp_path / "l.yaml")
    (tmp_path / "bad.json").write_text("{oops", encoding="utf-8")
    (tmp_path / "obj.json").write_text('{"data": {}}', encoding="utf-8")
    for name, message in (("bad.json", "is not JSON"), ("obj.json", "expected a list of tasks"),
                          ("missing.json", "No such file")):
        done = _bot("data", "label-import", str(tmp_path / name), BOT__DIALOGUE__INTENTS_LABELLED_PATH=labelled)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "l.yaml").exists()


def test_a_missing_labelled_file_is_no_extra_examples(tmp_path: Path) -> None:
    plain = IntentRecognizer.load(INTENTS)
    extra = IntentRecognizer.load(INTENTS, tmp_path / "nothing.yaml")
    assert [s.examples for s in extra.specs] == [s.examples for s in plain.specs]
    stale = tmp_path / "stale.yaml"
    stale.write_text("removed_intent: [一句话]\n", encoding="utf-8")  # an intent since removed: ignored
    assert [s.examples for s in IntentRecognizer.load(INTENTS, stale).specs] == [s.examples for s in plain.specs]

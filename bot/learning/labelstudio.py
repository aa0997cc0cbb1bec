"""Intent labelling in Label Studio: ``python -m bot data label-export OUT.json`` and
``python -m bot data label-import EXPORT.json``.

What goes out: archived customer questions the bot was unsure about. The archive keeps the intent a turn got
but not its confidence, so "unsure" is read from what the turn did: no intent at all, the clarifying question
(请问是以下哪一类问题？), or an answer of source ``unknown`` / ``fallback``. ``--confidence-below X`` adds the
questions today's recognizer (config/intents.yaml plus what was labelled before) classifies below X, rules
counting as certain. Texts are redacted again and de-duplicated after normalisation (NFKC, case, punctuation).

What comes back: Label Studio's JSON export. Per task the latest annotation that was neither cancelled nor empty
wins; its choice must be a known intent (others are reported). The texts are merged into
``dialogue.intents_labelled_path`` (``{intent: [texts]}``), a file of its own so config/intents.yaml stays the
hand-written truth; ``IntentRecognizer.load`` trains on both.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import yaml

from bot.config import Config
from bot.text import normalize

if TYPE_CHECKING:
    from bot.archive.db import ArchiveDb
    from bot.dialogue.intent import IntentRecognizer

Loader = Callable[[str | None], Config]

UNSURE_SOURCES = ("unknown", "fallback")
# The clarifying question's default wording (bot/dialogue/manager.py), when the graph's `texts` does not say.
DEFAULT_CLARIFY = ("请问您想咨询以下哪一类问题？", "Which of these is your question about?")
CONTROL = "intent"  # the Choices control's name, read back on import


class LabelError(Exception):
    """One line for the operator."""


@dataclass(frozen=True, slots=True)
class Candidate:
    id: int
    text: str
    reason: str  # no intent | clarifying question | source unknown | confidence 0.31
    intent: str | None
    source: str


def clarify_texts(cfg: Config) -> tuple[str, ...]:
    """The clarifying question in every language: the graph's ``texts.clarify`` and the defaults."""
    found = list(DEFAULT_CLARIFY)
    try:
        spec = yaml.safe_load(cfg.resolve_path(cfg.dialogue.path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return tuple(found)
    text = ((spec.get("texts") or {}).get("clarify") if isinstance(spec, dict) else None) or {}
    found += [str(v) for v in (text.values() if isinstance(text, dict) else [text]) if str(v).strip()]
    return tuple(found)


def unsure(db: ArchiveDb, clarify: Sequence[str], *, recognizer: IntentRecognizer | None = None,
           below: float | None = None) -> Iterator[Candidate]:
    """Archived message questions the bot was unsure of, oldest first."""
    from sqlalchemy import select

    from bot.archive.schema import turns

    stmt = (select(turns.c.id, turns.c.question, turns.c.answer, turns.c.intent, turns.c.source)
            .where(turns.c.kind == "message", turns.c.question.is_not(None)).order_by(turns.c.id))
    for row in db.stream(stmt):
        question, answer = (row["question"] or "").strip(), row["answer"] or ""
        if not question:
            continue
        reason = None
        if not row["intent"]:
            reason = "no intent"
        elif any(answer.startswith(c) for c in clarify):
            reason = "clarifying question"
        elif row["source"] in UNSURE_SOURCES:
            reason = f"source {row['source']}"
        elif recognizer is not None and below is not None:
            result = recognizer.recognize(question)
            if result.source != "rule" and result.confidence < below:
                reason = f"confidence {result.confidence:.2f}"
        if reason is not None:
            yield Candidate(int(row["id"]), question, reason, row["intent"], row["source"])


def tasks(candidates: Iterable[Candidate], limit: int | None) -> list[dict[str, Any]]:
    """Label Studio import tasks, redacted and de-duplicated after normalisation (the first occurrence kept)."""
    from bot.privacy import pii

    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for c in candidates:
        text = pii.redact(c.text)
        key = normalize(text)
        if not key or key in seen:
            continue
        seen.add(key)
        out.append({"data": {"text": text},
                    "meta": {"archive_id": c.id, "reason": c.reason, "intent": c.intent, "source": c.source}})
        if limit is not None and len(out) >= limit:
            break
    return out


def labeling_config(recognizer: IntentRecognizer) -> str:
    """A Choices control over the known intents: the value is the intent name (what comes back), the hint its
    Chinese label."""
    choices = "\n".join(f"    <Choice value={quoteattr(s.name)} hint={quoteattr(s.label('zh'))}/>"
                        for s in recognizer.specs)
    return ('<View>\n  <Header value="这条消息的意图是？"/>\n  <Text name="text" value="$text"/>\n'
            f'  <Choices name="{CONTROL}" toName="text" choice="single" showInLine="true" required="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


# --- import -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportReport:
    tasks: int = 0
    labelled: Counter[str] = field(default_factory=Counter)
    added: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [f"tasks read: {self.tasks}; labelled: {sum(self.labelled.values())}; "
               f"new examples: {sum(self.added.values())}"]
        out += [f"  {name}: +{n}" for name, n in sorted(self.added.items())]
        out += [f"  skipped {n} × {why}" for why, n in self.skipped.most_common()]
        if self.unknown:
            out.append("unknown intent labels (not in config/intents.yaml), skipped: "
                       + ", ".join(f"{name} ×{n}" for name, n in self.unknown.most_common()))
        return out


def _when(annotation: Mapping[str, Any]) -> tuple[str, int]:
    """Latest first by updated_at, then created_at (ISO 8601 strings sort in time), then id."""
    stamp = str(annotation.get("updated_at") or annotation.get("created_at") or "")
    ident = annotation.get("id")
    return stamp, ident if isinstance(ident, int) else 0


def _choice(annotation: Mapping[str, Any]) -> list[str]:
    """The chosen values of the ``intent`` control (of any Choices control when none is named so)."""
    results = annotation.get("result")
    found = [r for r in results if isinstance(r, dict) and r.get("type", "choices") == "choices"] \
        if isinstance(results, list) else []
    mine = [r for r in found if r.get("from_name") == CONTROL] or found
    picked: list[str] = []
    for r in mine:
        value = r.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if isinstance(choices, list):
            picked += [c.strip() for c in choices if isinstance(c, str) and c.strip()]
    return picked


def labelled(export: Any, known: frozenset[str], report: ImportReport) -> Iterator[tuple[str, str]]:
    """(intent, text) per usable task of a Label Studio JSON export."""
    from bot.privacy import pii

    if not isinstance(export, list):
        raise LabelError("not a Label Studio JSON export (expected a list of tasks)")
    for task in export:
        report.tasks += 1
        data = task.get("data") if isinstance(task, dict) else None
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            report.skipped["no text"] += 1
            continue
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        usable = [a for a in annotations if not a.get("was_cancelled") and _choice(a)]
        if not usable:
            report.skipped["cancelled" if annotations and all(a.get("was_cancelled") for a in annotations)
                           else "not annotated"] += 1
            continue
        choices = _choice(max(usable, key=_when))
        if len(set(choices)) != 1:
            report.skipped["more than one intent chosen"] += 1
            continue
        name = choices[0].strip()
        if name not in known:
            report.unknown[name] += 1
            continue
        report.labelled[name] += 1
        yield name, pii.redact(text.strip())


def merge(existing: Mapping[str, Sequence[str]], new: Iterable[tuple[str, str]], base: Mapping[str, Sequence[str]],
          report: ImportReport) -> dict[str, list[str]]:
    """Existing labels stay; a text already an example (here or in config/intents.yaml) is not added again.
    A text relabelled to another intent moves there: the latest label wins."""
    merged = {name: list(texts) for name, texts in existing.items()}
    base_keys = {normalize(t) for texts in base.values() for t in texts}
    for name, text in new:
        key = normalize(text)
        if not key:
            continue
        if key in base_keys:
            report.skipped["already an example in config/intents.yaml"] += 1
            continue
        holder = next((n for n, texts in merged.items() if any(normalize(t) == key for t in texts)), None)
        if holder == name:
            report.skipped["already labelled"] += 1
            continue
        if holder is not None:
            merged[holder] = [t for t in merged[holder] if normalize(t) != key]
        merged.setdefault(name, []).append(text)
        report.added[name] += 1
    return {name: texts for name, texts in sorted(merged.items()) if texts}


def write_labelled(path: Path, examples: Mapping[str, Sequence[str]]) -> None:
    header = ("# Intent examples labelled in Label Studio (`python -m bot data label-import`), trained on with\n"
              "# config/intents.yaml. Written by the tool; edit freely, a later import merges.\n")
    body = yaml.safe_dump({k: list(v) for k, v in examples.items()}, allow_unicode=True, sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + body, encoding="utf-8")
    tmp.replace(path)


# --- the commands -----------------------------------------------------------------------------------------


def add_verbs(verbs: argparse._SubParsersAction, load: Loader) -> list[argparse.ArgumentParser]:
    from bot.learning.tuning import positive_int, unit_float

    export = verbs.add_parser(
        "label-export", help="unsure archived questions as Label Studio tasks (+ OUT.config.xml) for intent labels",
        description="Questions with no intent, answered by the clarifying question, or of source unknown/fallback "
                    "(the archive keeps no confidence); --confidence-below adds those today's recognizer is "
                    "unsure of. Redacted, de-duplicated.")
    export.add_argument("output", type=Path, metavar="OUT.json")
    export.add_argument("--max", type=positive_int, help="at most this many tasks")
    export.add_argument("--confidence-below", type=unit_float, metavar="X",
                        help="also questions the current classifier scores below X (0-1)")
    export.set_defaults(func=lambda args: _guard("data label-export", cmd_label_export, args, load))
    imp = verbs.add_parser(
        "label-import", help="a Label Studio JSON export's intent labels into dialogue.intents_labelled_path")
    imp.add_argument("export", type=Path, metavar="EXPORT.json")
    imp.add_argument("--out", type=Path, help="default: dialogue.intents_labelled_path")
    imp.set_defaults(func=lambda args: _guard("data label-import", cmd_label_import, args, load))
    return [export, imp]


def _guard(name: str, fn: Callable[[argparse.Namespace, Loader], int], args: argparse.Namespace,
           load: Loader) -> int:
    from bot.config import ConfigError

    try:
        return fn(args, load)
    except (LabelError, ConfigError) as exc:
        print(f"kefu-hub {name}: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f" ({Path(exc.filename).name})" if exc.filename else ""
        print(f"kefu-hub {name}: {exc.strerror or exc}{where}", file=sys.stderr)
    return 2


def _recognizer(cfg: Config) -> IntentRecognizer:
    from bot.dialogue.intent import IntentRecognizer

    d = cfg.dialogue
    return IntentRecognizer.load(cfg.resolve_path(d.intents_path), cfg.resolve_path(d.intents_labelled_path))


def cmd_label_export(args: argparse.Namespace, load: Loader) -> int:
    from bot.learning.rating import RatingError, open_archive
    from bot.privacy import pii

    cfg = load(getattr(args, "config", None))
    pii.configure(pii.Redactor.from_config(cfg.privacy))
    recognizer = _recognizer(cfg)
    try:
        db = open_archive(cfg)
    except RatingError as exc:
        raise LabelError(str(exc)) from None
    try:
        found = tasks(unsure(db, clarify_texts(cfg), recognizer=recognizer, below=args.confidence_below), args.max)
    finally:
        db.close()
    out: Path = args.output
    config_path = out.with_name(out.name.removesuffix(".json") + ".config.xml")
    out.write_text(json.dumps(found, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    config_path.write_text(labeling_config(recognizer), encoding="utf-8")
    reasons = Counter(t["meta"]["reason"].split(" ")[0] for t in found)
    print(f"wrote {len(found)} tasks to {out} (" + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
          + f"); labeling config {config_path}")
    return 0


def cmd_label_import(args: argparse.Namespace, load: Loader) -> int:
    from bot.dialogue.intent import IntentRecognizer, read_labelled
    from bot.privacy import pii

    cfg = load(getattr(args, "config", None))
    pii.configure(pii.Redactor.from_config(cfg.privacy))
    try:
        export = json.loads(args.export.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise LabelError(f"{args.export.name} is not JSON (line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise LabelError(f"{args.export.name} is not UTF-8") from None
    base = IntentRecognizer.load(cfg.resolve_path(cfg.dialogue.intents_path))
    out: Path = args.out or cfg.resolve_path(cfg.dialogue.intents_labelled_path)
    report = ImportReport()
    merged = merge(read_labelled(out), labelled(export, base.names, report),
                   {s.name: s.examples for s in base.specs}, report)
    write_labelled(out, merged)
    for line in report.lines():
        print(line)
    print(f"wrote {sum(len(v) for v in merged.values())} labelled examples to {out}")
    return 0

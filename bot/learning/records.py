"""Training record files: JSON (a list, or ``{"records": [...]}``), JSON Lines and CSV, by file suffix.

A record is ``{query, response, context}`` (context optional). A record that cannot be read yields the reason
as a string in its place (records are numbered in file order, blank JSONL lines not counted), so the
cleaner counts it and one bad line never stops a run over a large export.
Reasons name the field, never the value (exports hold customers' words).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bot.decode import DecodeError, loads_json
from bot.learning.clean import Record

FIELDS = ("query", "response", "context")
FORMATS = (".json", ".jsonl", ".csv")


class RecordFileError(ValueError):
    """The file as a whole cannot be read (unknown suffix, not JSON, no header)."""


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".ndjson":
        return ".jsonl"
    if suffix not in FORMATS:
        raise RecordFileError(f"{path.name}: unknown format {suffix or '(none)'}; use one of {', '.join(FORMATS)}")
    return suffix


def to_record(item: Any) -> Record | str:
    if not isinstance(item, dict):
        return "not an object"
    values = {}
    for name in FIELDS:
        value = item.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            return f"{name} is not text"
        values[name] = value
    return Record(values["query"], values["response"], values["context"])


def read_records(path: str | Path) -> Iterator[Record | str]:
    path = Path(path)
    fmt = _format(path)
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if fmt == ".json":
        try:
            data = loads_json(raw, surrogates="replace")
        except DecodeError as exc:
            raise RecordFileError(f"{path.name}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("records"), list):
            data = data["records"]
        if not isinstance(data, list):
            raise RecordFileError(f"{path.name}: expected a JSON list of records or {{\"records\": [...]}}")
        yield from (to_record(item) for item in data)
    elif fmt == ".jsonl":
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                yield to_record(loads_json(line, surrogates="replace"))
            except DecodeError:
                yield "unreadable JSON line"
    else:
        text = raw.decode("utf-8", errors="replace")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or "query" not in reader.fieldnames or "response" not in reader.fieldnames:
            raise RecordFileError(f"{path.name}: the CSV header must name at least query and response")
        for row in reader:
            if None in row:  # more cells than header names
                yield "CSV row with extra cells"
                continue
            yield to_record({k: v for k, v in row.items() if k in FIELDS})


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    path = Path(path)
    fmt = _format(path)
    items = [{"query": r.query, "response": r.response, "context": r.context} for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as out:
        if fmt == ".json":
            json.dump(items, out, ensure_ascii=False, indent=1)
            out.write("\n")
        elif fmt == ".jsonl":
            for item in items:
                out.write(json.dumps(item, ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(out, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(items)
    return len(items)

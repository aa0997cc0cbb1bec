"""``python -m bot data clean IN OUT``: training records cleaned, with what was dropped and why;
``python -m bot data export OUT``: archived conversations (bot/archive/) as cleaned training records;
``python -m bot data label-export|label-import``: intent labelling in Label Studio (``labelstudio.py``);
``python -m bot train`` / ``python -m bot eval``: LoRA fine-tuning and held-out evaluation (``tuning.py``);
``python -m bot train-reranker``: the FAQ's cross-encoder fine-tuned on the FAQ's phrasings (``rerank.py``)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path

from bot.config import Config
from bot.learning.clean import CleanReport, Limits, clean_records
from bot.learning.records import FORMATS, RecordFileError, read_records, write_records

Loader = Callable[[str | None], Config]


def add_commands(sub: argparse._SubParsersAction, load: Loader) -> list[argparse.ArgumentParser]:
    data = sub.add_parser("data", help="prepare training data")
    verbs = data.add_subparsers(dest="verb", required=True)
    clean = verbs.add_parser("clean", help="normalise, redact and de-duplicate {query, response, context} records",
                             description=f"IN and OUT are {', '.join(FORMATS)} files (by suffix).")
    clean.add_argument("input", type=Path, metavar="IN")
    clean.add_argument("output", type=Path, metavar="OUT")
    default = Limits()
    clean.add_argument("--max-query-chars", type=int, default=default.max_query_chars)
    clean.add_argument("--max-response-chars", type=int, default=default.max_response_chars)
    clean.add_argument("--max-context-chars", type=int, default=default.max_context_chars)
    clean.set_defaults(func=lambda args: cmd_clean(args, load))
    export = _export_parser(verbs, load)
    from bot.learning.labelstudio import add_verbs as add_label_verbs
    from bot.learning.rerank import add_command as add_train_reranker
    from bot.learning.tuning import add_train_eval

    return [data, clean, export, *add_label_verbs(verbs, load), *add_train_eval(sub, load),
            add_train_reranker(sub, load)]


def _export_parser(verbs: argparse._SubParsersAction, load: Loader) -> argparse.ArgumentParser:
    from bot.learning.export import DEFAULT_SOURCES, FEEDBACK_FILTERS

    export = verbs.add_parser(
        "export", help="archived turns (archive.url) as cleaned {query, response, context} records",
        description=f"OUT is a {', '.join(FORMATS)} file (by suffix). Only answered message turns; the context "
                    "is the conversation's previous turns.")
    export.add_argument("output", type=Path, metavar="OUT")
    export.add_argument("--since", type=_day, help="first day, YYYY-MM-DD (UTC), inclusive")
    export.add_argument("--until", type=_day, help="last day, YYYY-MM-DD (UTC), inclusive")
    export.add_argument("--feedback", choices=FEEDBACK_FILTERS, default="not-down",
                        help="by the customers' thumbs: not-down (default: drop thumbs-down turns), up, down, "
                             "any, rated, unrated")
    export.add_argument("--source", type=_sources, default=DEFAULT_SOURCES,
                        help=f"comma-separated answer sources (default {','.join(sorted(DEFAULT_SOURCES))}; "
                             "also fallback, safety, system, unknown)")
    default = Limits()
    export.add_argument("--max-query-chars", type=int, default=default.max_query_chars)
    export.add_argument("--max-response-chars", type=int, default=default.max_response_chars)
    export.add_argument("--max-context-chars", type=int, default=default.max_context_chars)
    export.set_defaults(func=lambda args: cmd_export(args, load))
    return export


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a day as YYYY-MM-DD") from None


def _sources(text: str) -> frozenset[str]:
    from bot.archive.schema import SOURCES

    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = names - set(SOURCES)
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"sources are among {','.join(SOURCES)}")
    return names


def cmd_export(args: argparse.Namespace, load: Loader) -> int:
    from bot.archive.db import ArchiveDb, ArchiveUrlError, database_url, describe
    from bot.learning.export import ExportFilter, ExportReport, archived_records
    from bot.privacy import pii

    cfg = load(getattr(args, "config", None))
    pii.configure(pii.Redactor.from_config(cfg.privacy))
    if args.since and args.until and args.since > args.until:
        print("kefu-hub data export: --since is after --until", file=sys.stderr)
        return 2
    try:
        url = database_url(cfg.archive.url, cfg.resolve_path("."))
    except ArchiveUrlError as exc:
        print(f"kefu-hub data export: {exc}", file=sys.stderr)
        return 2
    flt = ExportFilter(since=args.since, until=args.until, feedback=args.feedback, sources=args.source)
    limits = Limits(args.max_query_chars, args.max_response_chars, args.max_context_chars)
    exported, cleaned = ExportReport(), CleanReport()
    try:
        db = ArchiveDb.open(url)
    except Exception as exc:  # the class only: a driver's message may quote the connection string
        print(f"kefu-hub data export: cannot open the archive, {describe(url)} ({type(exc).__name__})",
              file=sys.stderr)
        return 2
    try:
        written = write_records(args.output, clean_records(archived_records(db, flt, exported), limits, cleaned))
    except (RecordFileError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"kefu-hub data export: {reason}", file=sys.stderr)
        return 2
    finally:
        db.close()
    for line in exported.lines() + cleaned.lines():
        print(line)
    print(f"wrote {written} records to {args.output}")
    return 0


def cmd_clean(args: argparse.Namespace, load: Loader) -> int:
    from bot.privacy import pii

    cfg = load(getattr(args, "config", None))
    pii.configure(pii.Redactor.from_config(cfg.privacy))  # the deployment's extra patterns count here too
    limits = Limits(args.max_query_chars, args.max_response_chars, args.max_context_chars)
    report = CleanReport()
    try:
        written = write_records(args.output, clean_records(read_records(args.input), limits, report))
    except (RecordFileError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"kefu-hub data clean: {reason}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print(f"wrote {written} records to {args.output}")
    return 0

"""``python -m bot data clean IN OUT``: training records cleaned, with what was dropped and why."""

from __future__ import annotations

import argparse
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
    return [data, clean]


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

"""Human rating of archived answers: ``python -m bot eval sample`` and ``python -m bot eval ratings FILE``.

The original design's check of answer quality: people rate a random sample of real conversations for accuracy,
fluency and completeness (1-5). ``sample`` writes the sheet twice, as a CSV for Excel and as one self-contained
HTML form that downloads the same CSV filled in; ``ratings`` reads a filled sheet back and reports per A/B arm
(or adapter) the mean and 95% confidence interval of each criterion and of their average.

Sampling is simple random by default (every answered message turn equally likely, so the sheet says how the bot
does overall); ``--stratified`` takes an equal share per arm/adapter instead, so a small arm still gets enough
rows to compare. Either way ``--seed`` makes the draw reproducible. The sheet carries the adapter and arm itself:
the report needs no archive, which may have been purged by retention since.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import html
import io
import math
import random
import re
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Config

if TYPE_CHECKING:
    from bot.archive.db import ArchiveDb

Loader = Callable[[str | None], Config]

CRITERIA = ("accuracy", "fluency", "completeness")
LABELS = {"accuracy": "准确性", "fluency": "流畅性", "completeness": "完整性"}
COLUMNS = ("id", "adapter", "arm", "source", "question", "answer", *CRITERIA, "comment")
# Answers worth a person's time: not apologies ("system") nor what an agent wrote ("agent": not the bot's).
DEFAULT_SOURCES = frozenset({"faq", "llm", "dialogue", "fallback"})
BASE = "base"  # the group of turns answered with no adapter and outside any A/B test
_ANSWERED = ("ok", "resent")
_SCORE = re.compile(r"[1-5]")


class RatingError(Exception):
    """One line for the operator."""


@dataclass(frozen=True, slots=True)
class SheetRow:
    id: str
    adapter: str
    arm: str
    source: str
    question: str
    answer: str

    @property
    def group(self) -> str:
        return group_of(self.adapter, self.arm)


def group_of(adapter: str, arm: str) -> str:
    """What a turn is reported under: its A/B arm ("<test>/<arm>") when it had one, else its adapter."""
    return arm or adapter or BASE


# --- sampling ---------------------------------------------------------------------------------------------


def candidates(db: ArchiveDb, *, since: dt.date | None = None,
               sources: frozenset[str] = DEFAULT_SOURCES) -> list[SheetRow]:
    """Answered message turns, oldest first (a stable order, so a seed always draws the same rows)."""
    from sqlalchemy import select

    from bot.archive.schema import turns

    stmt = (select(turns.c.id, turns.c.adapter, turns.c.arm, turns.c.source, turns.c.question, turns.c.answer)
            .where(turns.c.kind == "message", turns.c.outcome.in_(_ANSWERED), turns.c.source.in_(sorted(sources)))
            .order_by(turns.c.id))
    if since is not None:
        stmt = stmt.where(turns.c.created_at >= dt.datetime.combine(since, dt.time(), tzinfo=dt.UTC))
    out = []
    for row in db.stream(stmt):
        question, answer = (row["question"] or "").strip(), (row["answer"] or "").strip()
        if question and answer:
            out.append(SheetRow(str(row["id"]), row["adapter"] or "", row["arm"] or "", row["source"],
                                question, answer))
    return out


def draw(rows: Sequence[SheetRow], n: int, seed: int | None, *, stratified: bool = False) -> list[SheetRow]:
    """``n`` rows (all when fewer), in a random order so a rater sees no arm's turns in a block.

    Stratified: an equal share per group, the remainder to the largest groups; a group smaller than its share
    gives its rest to the others."""
    rng = random.Random(seed)
    if len(rows) <= n:
        picked = list(rows)
    elif not stratified:
        picked = rng.sample(list(rows), n)
    else:
        groups: dict[str, list[SheetRow]] = defaultdict(list)
        for row in rows:
            groups[row.group].append(row)
        quota = dict.fromkeys(groups, 0)
        left = n
        while left:
            open_groups = sorted((g for g in groups if quota[g] < len(groups[g])), key=lambda g: -len(groups[g]))
            for g in open_groups[:left]:
                quota[g] += 1
                left -= 1
        picked = [r for g in sorted(groups) for r in rng.sample(groups[g], quota[g])]
    rng.shuffle(picked)
    return picked


def redacted(rows: Iterable[SheetRow]) -> list[SheetRow]:
    """Redacted once more with this deployment's patterns: the archive should hold no numbers, a sheet that
    leaves the building must not."""
    from bot.privacy import pii

    return [SheetRow(r.id, r.adapter, r.arm, r.source, pii.redact(r.question), pii.redact(r.answer)) for r in rows]


# --- the sheet --------------------------------------------------------------------------------------------


def sheet_csv(rows: Sequence[SheetRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r.id, r.adapter, r.arm, r.source, r.question, r.answer, "", "", "", ""])
    return buf.getvalue()


def write_csv(path: Path, rows: Sequence[SheetRow]) -> None:
    # utf-8-sig: Excel reads a CSV without the BOM as the local code page and garbles the Chinese.
    path.write_text(sheet_csv(rows), encoding="utf-8-sig", newline="")


_SCRIPT = """
const COLUMNS = %s;
function cell(v) { v = String(v); return /[",\\r\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
function download() {
  const lines = [COLUMNS.join(",")];
  document.querySelectorAll("tr.turn").forEach(function (tr) {
    const d = tr.dataset, row = [d.id, d.adapter, d.arm, d.source, d.question, d.answer];
    ["accuracy", "fluency", "completeness"].forEach(function (c) {
      const on = tr.querySelector('input[data-c="' + c + '"]:checked');
      row.push(on ? on.value : "");
    });
    row.push(tr.querySelector("textarea").value);
    lines.push(row.map(cell).join(","));
  });
  const blob = new Blob(["\\ufeff" + lines.join("\\r\\n") + "\\r\\n"], {type: "text/csv;charset=utf-8"});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "ratings.csv";
  document.body.appendChild(a); a.click(); a.remove();
}
"""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; width: 100%; }
td, th { border: 1px solid #ccc; padding: .4em; vertical-align: top; }
.text { white-space: pre-wrap; max-width: 28em; }
fieldset { border: 0; margin: 0 0 .3em; padding: 0; }
legend { font-weight: bold; }
button { font-size: 1.1em; margin: 1em 0; }
"""


def sheet_html(rows: Sequence[SheetRow], *, title: str = "客服回答人工评分") -> str:
    """One file, no external resources: every text is escaped (a question may be ``<script>``), the data a
    download needs rides on each row's data attributes."""
    e = html.escape
    out = [
        "<!DOCTYPE html>", '<html lang="zh"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
        f"<style>{_STYLE}</style>", "</head><body>", f"<h1>{e(title)}</h1>",
        "<p>每条回答按 1（很差）到 5（很好）评分：准确性、流畅性、完整性；可写备注。完成后点击下方按钮下载 CSV，"
        "再运行 <code>python -m bot eval ratings ratings.csv</code>。</p>",
        '<table><thead><tr><th>#</th><th>问题</th><th>回答</th><th>评分</th></tr></thead><tbody>',
    ]
    for i, r in enumerate(rows):
        attrs = " ".join(f'data-{k}="{e(v, quote=True)}"' for k, v in (
            ("id", r.id), ("adapter", r.adapter), ("arm", r.arm), ("source", r.source), ("question", r.question),
            ("answer", r.answer)))
        groups = []
        for c in CRITERIA:
            radios = "".join(
                f'<label><input type="radio" name="r{i}-{c}" data-c="{c}" value="{v}">{v}</label> '
                for v in range(1, 6))
            groups.append(f"<fieldset><legend>{LABELS[c]}</legend>{radios}</fieldset>")
        out.append(
            f'<tr class="turn" {attrs}><td>{i + 1}<br><small>{e(r.group)}</small></td>'
            f'<td class="text">{e(r.question)}</td><td class="text">{e(r.answer)}</td>'
            f'<td>{"".join(groups)}<textarea rows="2" cols="24" placeholder="备注"></textarea></td></tr>')
    columns = "[" + ",".join(f'"{c}"' for c in COLUMNS) + "]"
    out += ["</tbody></table>", '<button type="button" onclick="download()">下载评分 CSV</button>',
            f"<script>{_SCRIPT % columns}</script>", "</body></html>"]
    return "\n".join(out) + "\n"


# --- reading scores back ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Ratings:
    scores: dict[str, list[tuple[int, int, int]]] = field(default_factory=lambda: defaultdict(list))
    bad: list[str] = field(default_factory=list)  # "row 7: fluency '6' is not 1-5"
    unrated: int = 0


def _score(text: str) -> int | None:
    text = unicodedata.normalize("NFKC", text or "").strip()
    if text.endswith(".0"):  # Excel may save a number as 4.0
        text = text[:-2]
    return int(text) if _SCORE.fullmatch(text) else None


def read_ratings(path: Path) -> Ratings:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RatingError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # with or without the BOM
    except UnicodeDecodeError:
        raise RatingError(f"{path.name} is not UTF-8; save it as \"CSV UTF-8\"") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ("adapter", "arm", *CRITERIA) if c not in (reader.fieldnames or ())]
    if missing:
        raise RatingError(f"{path.name}: not a rating sheet, missing column(s) {', '.join(missing)}")
    out = Ratings()
    for number, row in enumerate(reader, start=2):  # the spreadsheet's row number: the header is row 1
        cells = {c: (row.get(c) or "").strip() for c in CRITERIA}
        if not any(cells.values()):
            out.unrated += 1
            continue
        problems = []
        values: list[int] = []
        for c in CRITERIA:
            value = _score(cells[c])
            if value is None:
                problems.append(f"{c} {cells[c]!r} is not a whole number 1-5" if cells[c] else f"{c} is empty")
            else:
                values.append(value)
        if problems:
            out.bad.append(f"row {number}: " + "; ".join(problems))
            continue
        out.scores[group_of((row.get("adapter") or "").strip(), (row.get("arm") or "").strip())].append(
            (values[0], values[1], values[2]))
    return out


def _t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t interval (None for a single rating: no spread to go on)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, _t975(n - 1) * sd / math.sqrt(n)


def _fmt(values: Sequence[float]) -> str:
    mean, half = mean_ci(values)
    return f"{mean:.2f}" + (f" ± {half:.2f}" if half is not None else " (n=1, no CI)")


def report_lines(ratings: Ratings) -> list[str]:
    lines = []
    for group in sorted(ratings.scores):
        rows = ratings.scores[group]
        lines.append(f"{group}: {len(rows)} rated")
        for i, c in enumerate(CRITERIA):
            lines.append(f"  {LABELS[c]} {c:<13} {_fmt([r[i] for r in rows])}")
        lines.append(f"  总体   {'overall':<13} {_fmt([sum(r) / 3 for r in rows])}")
    if not ratings.scores:
        lines.append("no rated rows")
    lines.append("(mean ± half-width of the 95% t confidence interval; overall = each turn's average of the three)")
    if ratings.unrated:
        lines.append(f"unrated rows skipped: {ratings.unrated}")
    if ratings.bad:
        lines.append(f"bad rows skipped: {len(ratings.bad)}")
        lines += [f"  {b}" for b in ratings.bad]
    return lines


# --- the commands -----------------------------------------------------------------------------------------


def add_eval_verbs(ev: argparse.ArgumentParser, load: Loader) -> list[argparse.ArgumentParser]:
    """``eval sample`` and ``eval ratings`` beside ``eval --base ...``: the verbs are optional, so the model
    evaluation keeps its documented form."""
    from bot.learning.cli import _day, _sources
    from bot.learning.tuning import positive_int

    verbs = ev.add_subparsers(dest="eval_verb", metavar="{sample,ratings}",
                              help="human rating (without a verb: the model evaluation, --base ...)")
    sample = verbs.add_parser(
        "sample", help="a rating sheet (CSV + HTML form) of randomly sampled archived answers",
        description="Simple random sampling of answered message turns by default; --stratified takes an equal "
                    "share per A/B arm or adapter. Writes OUT.csv (UTF-8 with BOM) and OUT.html.")
    sample.add_argument("--n", type=positive_int, default=100, help="turns to sample (default 100)")
    sample.add_argument("--since", type=_day, help="first day, YYYY-MM-DD (UTC), inclusive")
    sample.add_argument("--source", type=_sources, default=DEFAULT_SOURCES,
                        help=f"comma-separated answer sources (default {','.join(sorted(DEFAULT_SOURCES))})")
    sample.add_argument("--seed", type=int, help="the same seed draws the same turns")
    sample.add_argument("--stratified", action="store_true", help="an equal share per arm/adapter")
    sample.add_argument("--out", type=Path, default=Path("rating-sheet"),
                        help="path without suffix (default rating-sheet: rating-sheet.csv, rating-sheet.html)")
    sample.set_defaults(func=lambda args: _guard("eval sample", cmd_sample, args, load))
    ratings = verbs.add_parser("ratings", help="per arm/adapter means and 95%% CIs from a filled rating sheet")
    ratings.add_argument("sheet", type=Path, metavar="FILE", help="the filled CSV")
    ratings.set_defaults(func=lambda args: _guard("eval ratings", cmd_ratings, args, load))
    return [sample, ratings]


def _guard(name: str, fn: Callable[[argparse.Namespace, Loader], int], args: argparse.Namespace,
           load: Loader) -> int:
    try:
        return fn(args, load)
    except RatingError as exc:
        print(f"kefu-hub {name}: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"kefu-hub {name}: {exc.strerror or exc}", file=sys.stderr)
    return 2


def open_archive(cfg: Config) -> Any:
    from bot.archive.db import ArchiveDb, ArchiveUrlError, database_url, describe

    try:
        url = database_url(cfg.archive.url, cfg.resolve_path("."))
    except ArchiveUrlError as exc:
        raise RatingError(str(exc)) from None
    try:
        return ArchiveDb.open(url)
    except Exception as exc:  # the class only: a driver's message may quote the connection string
        raise RatingError(f"cannot open the archive, {describe(url)} ({type(exc).__name__})") from None


def cmd_sample(args: argparse.Namespace, load: Loader) -> int:
    from bot.privacy import pii

    cfg = load(getattr(args, "config", None))
    pii.configure(pii.Redactor.from_config(cfg.privacy))
    db = open_archive(cfg)
    try:
        pool = candidates(db, since=args.since, sources=args.source)
    finally:
        db.close()
    if not pool:
        raise RatingError("no answered message turns in the archive match")
    rows = redacted(draw(pool, args.n, args.seed, stratified=args.stratified))
    csv_path, html_path = args.out.with_name(args.out.name + ".csv"), args.out.with_name(args.out.name + ".html")
    write_csv(csv_path, rows)
    html_path.write_text(sheet_html(rows), encoding="utf-8")
    how = "stratified by arm/adapter" if args.stratified else "simple random"
    per: dict[str, int] = defaultdict(int)
    for r in rows:
        per[r.group] += 1
    seed = f"seed {args.seed}" if args.seed is not None else "no seed: pass --seed to draw the same again"
    print(f"sampled {len(rows)} of {len(pool)} answered turns ({how}, {seed})")
    print("  " + ", ".join(f"{g}: {k}" for g, k in sorted(per.items())))
    print(f"wrote {csv_path} and {html_path}")
    return 0


def cmd_ratings(args: argparse.Namespace, load: Loader) -> int:
    for line in report_lines(read_ratings(args.sheet)):
        print(line)
    return 0

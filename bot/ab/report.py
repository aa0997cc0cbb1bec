"""``python -m bot ab-report``: satisfaction (thumbs up among rated turns) per arm of an A/B test, from the
conversation archive (bot/archive/).

A turn's rating is the last vote on it (a vote taken back, ``none``, leaves it unrated), linked by the rated
event's id. For each arm after the first (the control): a fixed-horizon two-proportion z-test
(statsmodels ``proportions_ztest``), the Bayesian probability that the arm's rate is above the control's
under Beta(1, 1) priors (exact, Evan Miller's sum, so the same archive always prints the same number), and
a warning when the rated sample is too small to detect the observed difference at 80 % power and
alpha 0.05 (``NormalIndPower`` on Cohen's h): a "significant" result from too few votes is mostly noise, and
a big difference seen early usually shrinks. The test is fixed-horizon: looking at it every day and stopping
when p < 0.05 inflates false positives, so the report says so every time.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # SQLAlchemy is imported when a report runs, not by every `python -m bot` command
    from bot.archive.db import ArchiveDb
    from engine.config import AbTest

ALPHA = 0.05
POWER = 0.8
FALLBACK_SOURCES = ("fallback", "unknown")
MIN_CELL = 5  # below this many ups or downs in an arm, the z-test's normal approximation is rough
PEEKING = ("note: this is a fixed-horizon test; decide the sample size first and read the result once. Checking "
           "it repeatedly and stopping at the first p < 0.05 inflates false positives (use a sequential method "
           "for that).")


@dataclass(slots=True)
class ArmStats:
    name: str
    turns: int = 0
    fallbacks: int = 0
    up: int = 0
    down: int = 0

    @property
    def rated(self) -> int:
        return self.up + self.down

    @property
    def rate(self) -> float | None:
        return self.up / self.rated if self.rated else None

    def interval(self) -> tuple[float, float] | None:
        """95 % Wilson interval of the thumbs-up rate (sensible at 0 % and 100 % too, unlike the normal one)."""
        if not self.rated:
            return None
        from statsmodels.stats.proportion import proportion_confint

        low, high = proportion_confint(self.up, self.rated, alpha=ALPHA, method="wilson")
        return float(low), float(high)


@dataclass(frozen=True, slots=True)
class Comparison:
    arm: str
    control: str
    difference: float  # arm rate - control rate
    z: float
    p_value: float
    p_better: float  # P(arm's rate > control's) under Beta(1, 1) priors
    effect_h: float  # Cohen's h
    power: float  # of this sample for the observed difference
    needed_per_arm: int | None  # rated turns per arm for 80 % power at the observed difference (None: no difference)
    warnings: tuple[str, ...] = ()


@dataclass(slots=True)
class AbTestReport:
    test: str
    arms: list[ArmStats]
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"== A/B test {self.test}: control {self.arms[0].name if self.arms else '-'}"]
        out += [f"  {note}" for note in self.notes]
        if not self.arms:
            return out
        out.append(f"  {'arm':<16} {'turns':>7} {'fallback':>8} {'rated':>6} {'up':>6} {'up rate':>8}  95% interval")
        for arm in self.arms:
            rate = "-" if arm.rate is None else f"{arm.rate:.1%}"
            ci = arm.interval()
            shown = "-" if ci is None else f"{ci[0]:.1%} – {ci[1]:.1%}"
            out.append(f"  {arm.name:<16} {arm.turns:>7} {arm.fallbacks:>8} {arm.rated:>6} {arm.up:>6} {rate:>8}  "
                       f"{shown}")
        for c in self.comparisons:
            verdict = "significant" if c.p_value < ALPHA else "not significant"
            out.append(f"  {c.arm} vs {c.control}: {c.difference * 100:+.1f} points, z = {c.z:.2f}, "
                       f"p = {c.p_value:.4f} ({verdict} at {ALPHA}); P({c.arm} beats {c.control}) = {c.p_better:.1%}")
            out += [f"    WARNING: {w}" for w in c.warnings]
        return out


def prob_beats(up_b: int, down_b: int, up_a: int, down_a: int) -> float:
    """P(p_B > p_A) for p ~ Beta(1 + up, 1 + down), exactly (Evan Miller, "Formulas for Bayesian A/B testing")."""
    import numpy as np
    from scipy.special import betaln

    a_a, b_a, a_b, b_b = 1 + up_a, 1 + down_a, 1 + up_b, 1 + down_b

    i = np.arange(a_b, dtype=float)
    terms = betaln(a_a + i, b_a + b_b) - np.log(b_b + i) - betaln(1 + i, b_b) - betaln(a_a, b_a)
    return float(min(1.0, max(0.0, np.exp(terms).sum())))


def compare(arm: ArmStats, control: ArmStats) -> Comparison | None:
    """None while either arm has no rated turn (there is nothing to compare yet)."""
    if not arm.rated or not control.rated:
        return None
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize, proportions_ztest

    p_b, p_a = arm.up / arm.rated, control.up / control.rated
    warnings: list[str] = []
    if arm.up + control.up in (0, arm.rated + control.rated):  # all down or all up: no variance to test
        z, p_value = 0.0, 1.0
    else:
        z_raw, p_raw = proportions_ztest([arm.up, control.up], [arm.rated, control.rated])
        z, p_value = float(z_raw), float(p_raw)
    h = float(proportion_effectsize(p_b, p_a))
    ratio = arm.rated / control.rated
    analysis = NormalIndPower()
    if h == 0:
        power, needed = ALPHA, None
    else:
        power = float(analysis.power(effect_size=abs(h), nobs1=control.rated, alpha=ALPHA, ratio=ratio))
        needed = math.ceil(float(analysis.solve_power(effect_size=abs(h), alpha=ALPHA, power=POWER, ratio=1.0)))
        if power < POWER:
            warnings.append(
                f"sample too small for the difference it shows: {control.rated} + {arm.rated} rated turns give "
                f"{power:.0%} power to detect {(p_b - p_a) * 100:+.1f} points (alpha {ALPHA}); "
                f"about {needed} rated turns per arm are needed for {POWER:.0%}")
    if min(arm.up, arm.down, control.up, control.down) < MIN_CELL:
        warnings.append(f"fewer than {MIN_CELL} ups or downs in an arm: the z-test's normal approximation is rough")
    return Comparison(arm.name, control.name, p_b - p_a, z, p_value, prob_beats(arm.up, arm.down, control.up,
                      control.down), h, power, needed, tuple(warnings))


def summarize(test: str, arm_order: Sequence[str], turns: Iterable[Mapping[str, Any]],
              votes: Mapping[tuple[str, str, str], str]) -> AbTestReport:
    """Turns of one test (``arm`` = "<test>/<arm>") and the last vote per (channel, tenant, event id)."""
    stats = {name: ArmStats(name) for name in arm_order}
    for row in turns:
        name = str(row["arm"]).split("/", 1)[1]
        arm = stats.setdefault(name, ArmStats(name))
        arm.turns += 1
        if row["source"] in FALLBACK_SOURCES or row["outcome"] in ("timeout", "error"):
            arm.fallbacks += 1
        rating = votes.get((row["channel"], row["tenant"], row["event_id"]))
        if rating == "up":
            arm.up += 1
        elif rating == "down":
            arm.down += 1
    arms = list(stats.values())
    report = AbTestReport(test, arms)
    if len(arms) < 2:
        report.notes.append("only one arm has turns: nothing to compare")
        return report
    for arm in arms[1:]:
        c = compare(arm, arms[0])
        if c is None:
            report.notes.append(f"{arm.name} vs {arms[0].name}: no rated turns in one of them yet")
        else:
            report.comparisons.append(c)
    return report


def report(db: ArchiveDb, configured: Sequence[AbTest], *, test: str | None = None,
           since: dt.date | None = None) -> list[AbTestReport]:
    """One report per test found in the archive (or the one named), arms in the configured order (the
    first is the control); a test no longer configured is compared with its first arm by name."""
    from sqlalchemy import select

    from bot.archive.schema import turns

    stmt = (select(turns.c.arm, turns.c.channel, turns.c.tenant, turns.c.event_id, turns.c.source,
                   turns.c.outcome)
            .where(turns.c.arm.is_not(None), turns.c.kind == "message"))
    if test is not None:
        stmt = stmt.where(turns.c.arm.like(test.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                                           + "/%", escape="\\"))
    if since is not None:
        stmt = stmt.where(turns.c.created_at >= dt.datetime.combine(since, dt.time(), tzinfo=dt.UTC))
    by_test: dict[str, list[dict[str, Any]]] = {}
    for row in db.stream(stmt):
        name, sep, _arm = str(row["arm"]).partition("/")
        if sep:
            by_test.setdefault(name, []).append(row)
    votes = db.latest_votes() if by_test else {}
    known = {t.name: t for t in configured}
    out = []
    for name in sorted(by_test) if test is None else [test]:
        rows = by_test.get(name, [])
        cfg = known.get(name)
        if not rows:
            out.append(AbTestReport(name, [], notes=["no archived turns for this test"
                                                     + (f" since {since}" if since else "")]))
            continue
        order = [a.name for a in cfg.arms] if cfg is not None else sorted(Counter(
            str(r["arm"]).split("/", 1)[1] for r in rows))
        rep = summarize(name, order, rows, votes)
        if cfg is None:
            rep.notes.insert(0, "not in engine.ab_tests: the control is the first arm by name")
        out.append(rep)
    return out


def lines(reports: Sequence[AbTestReport]) -> list[str]:
    if not reports:
        return ["no archived turns with an A/B arm", PEEKING]
    out: list[str] = []
    for rep in reports:
        out += [*rep.lines(), ""]
    return [*out, PEEKING]


# ---------------------------------------------------------------- command line


def _day(text: str) -> dt.date:
    import argparse

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a day as YYYY-MM-DD") from None


def add_command(sub: Any, load: Any) -> Any:
    """``ab-report`` on the CLI's subparsers; ``load(path)`` reads the config (exit 2 on a bad one)."""
    parser = sub.add_parser("ab-report", help="A/B tests from the archive: thumbs-up rate per arm, z-test, "
                                              "P(beats control), sample-size warnings")
    parser.add_argument("--test", help="only this test (default: every test found in the archive)")
    parser.add_argument("--since", type=_day, help="turns from this day on, YYYY-MM-DD (UTC)")
    parser.set_defaults(func=lambda args: cmd_ab_report(args, load))
    return parser


def cmd_ab_report(args: Any, load: Any) -> int:
    import sys

    from bot.archive.db import ArchiveDb, ArchiveUrlError, database_url, describe

    cfg = load(getattr(args, "config", None))
    try:
        url = database_url(cfg.archive.url, cfg.resolve_path("."))
    except ArchiveUrlError as exc:
        print(f"kefu-hub ab-report: {exc}", file=sys.stderr)
        return 2
    try:
        db = ArchiveDb.open(url)
    except Exception as exc:  # the class only: a driver's message may quote the connection string
        print(f"kefu-hub ab-report: cannot open the archive, {describe(url)} ({type(exc).__name__})", file=sys.stderr)
        return 2
    try:
        reports = report(db, cfg.engine.ab_tests, test=args.test, since=args.since)
    finally:
        db.close()
    for line in lines(reports):
        print(line)
    return 0

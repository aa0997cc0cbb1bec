"""Command line: ``python -m bot serve | faq-eval | intent-eval | speech-act-eval | check-config | data |
ab-report | console``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bot.config import Config, ConfigError, load_config
from bot.logsafe import (
    SecretFilter,
    install_malformed_request_filter,
    install_secret_filter,
    mask_config,
    secrets_of,
)


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"kefu-hub: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _logging(cfg: Config) -> SecretFilter:
    """Root handlers carry a filter that blanks every configured secret, and one that redacts personal
    data under the process's ``privacy:`` policy (set here, for the stores as much as for the log)."""
    from bot.privacy import pii
    from bot.privacy.logfilter import install_pii_filter

    logging.basicConfig(level=cfg.logging.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_malformed_request_filter()
    secret_filter = install_secret_filter(secrets_of(cfg.model_dump()))
    pii.configure(pii.Redactor.from_config(cfg.privacy))
    install_pii_filter()
    return secret_filter


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from bot.app import create_app
    from bot.startcheck import check_open_api
    from bot.state.redisconn import RedisTooOld

    cfg = _load(args.config)
    secret_filter = _logging(cfg)
    if args.role != "all" and not cfg.queue.url:
        print(f"kefu-hub: --role {args.role} needs a shared queue: set queue.url (BOT__QUEUE__URL=amqp://...)",
              file=sys.stderr)
        return 2
    try:
        check_open_api(cfg, args.role)  # /chat without api.keys: a loud warning, refused off loopback
        app = create_app(cfg, role=args.role)
    except (ConfigError, ValueError) as exc:  # a channel or engine refusing its settings
        print(f"kefu-hub: invalid configuration: {secret_filter.scrub(str(exc))}", file=sys.stderr)
        return 2
    port = cfg.server.worker_port if args.role == "worker" else cfg.server.port
    print(f"kefu-hub {args.role} serving on http://{cfg.server.host}:{port}", flush=True)
    access = {} if cfg.logging.access else {"access_log": None}
    try:
        web.run_app(app, host=cfg.server.host, port=port, print=None, shutdown_timeout=15, **access)
    except RedisTooOld as exc:  # found at connect, before listening: a setup error like any other
        print(f"kefu-hub: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # through logging (and its secret filter), not the bare traceback hook
        logging.getLogger("bot").error("kefu-hub %s stopped: %s", args.role, type(exc).__name__, exc_info=True)
        return 1
    return 0


FAQ_EVAL_FILES = ("config/faq_eval_hard.yaml", "config/faq_eval.yaml")  # the hard dev set, then the easy one
# Held-out sets, written blind by other hands: only their figures are printed (never their misses or
# confusions), so nobody tunes the FAQ, the synonyms or the retriever on them.
FAQ_HOLDOUT = ("config/faq_eval_holdout.yaml", "config/faq_eval_fresh.yaml")


def cmd_faq_eval(args: argparse.Namespace) -> int:
    import time

    from bot.faq import FaqIndex, load_eval_cases
    from bot.faq.rerank import open_reranking

    cfg = _load(args.config)
    started = time.perf_counter()
    try:
        reranking = open_reranking(cfg.faq, cfg.resolve_path)
    except ValueError as exc:
        print(f"kefu-hub: invalid configuration: {exc}", file=sys.stderr)
        return 2
    index = FaqIndex.from_config(cfg.faq, cfg.resolve_path, reranking=reranking)
    built = time.perf_counter() - started
    files = list(args.cases or FAQ_EVAL_FILES) + (list(FAQ_HOLDOUT) if args.holdout else [])
    rerank = (f"re-ranked by {Path(cfg.faq.reranker.path).name} (weight {cfg.faq.rerank_weight:.2f}, top "
              f"{cfg.faq.rerank_top_k})" if reranking is not None else "lexical only (faq.reranker.path empty)")
    print(f"FAQ entries: {len(index.entries)}; index built in {built:.2f}s; "
          f"threshold {index.threshold:.2f}, floor {index.floor:.2f}, margin {index.margin:.2f}; {rerank}")
    for name in files:
        cases = load_eval_cases(cfg.resolve_path(name))
        started = time.perf_counter()
        r = index.evaluate(cases)
        per_query = (time.perf_counter() - started) / max(1, len(cases)) * 1000
        print(f"\n== {name}: {r.total} cases, {r.unknown_total} out of scope ({per_query:.1f} ms a query)")
        print(f"top-1 accuracy: {r.accuracy:.1%} ({r.correct}/{r.total})")
        print(f"top-3 accuracy: {r.top3_accuracy:.1%} ({r.top3}/{r.total})")
        print(f"out-of-scope refused: {r.refusal_rate:.1%} ({r.unknown_refused}/{r.unknown_total})")
        for style, (right, total) in r.per_style.items():
            print(f"  {style:<12} {right}/{total} ({right / total:.0%})")
        if Path(name).name in {Path(h).name for h in FAQ_HOLDOUT}:
            print("(held out: misses and confusions are not shown)")
            continue
        if r.confusions:
            print("confusions (expected -> got, '-' = not confident):")
            for expect, got, count in r.confusions[: args.top]:
                print(f"  {count:>3}  {expect} -> {got}")
        for query, expect, got, score in r.misses:
            print(f"  miss: {query!r} expected {expect} got {got} ({score:.2f})")
        for query, got, score in r.accepted:
            print(f"  answered out of scope: {query!r} by {got} ({score:.2f})")
    return 0


def cmd_intent_eval(args: argparse.Namespace) -> int:
    from bot.dialogue.intent import IntentRecognizer, load_eval_cases

    cfg = _load(args.config)
    recognizer = IntentRecognizer.load(cfg.resolve_path(cfg.dialogue.intents_path),
                                       cfg.resolve_path(cfg.dialogue.intents_labelled_path))
    result = recognizer.evaluate(load_eval_cases(cfg.resolve_path(args.cases or cfg.dialogue.intents_eval_path)))
    examples = sum(len(s.examples) for s in recognizer.specs)
    print(f"intents: {len(recognizer.specs)}; training examples: {examples}; held-out cases: {result.total}")
    print(f"held-out accuracy (rules + classifier): {result.accuracy:.1%} ({result.correct}/{result.total})")
    model = f"{result.model_accuracy:.1%} ({result.model_correct}/{result.total})"
    print(f"held-out accuracy (classifier alone):   {model}")
    for name, (correct, total) in sorted(result.per_intent.items()):
        print(f"  {name:<12} {correct}/{total}")
    for text, expect, got, confidence in result.misses:
        print(f"  miss: {text!r} expected {expect} got {got} ({confidence:.2f})")
    return 0


def cmd_speech_act_eval(args: argparse.Namespace) -> int:
    from bot.dialogue.speech_act import SpeechActClassifier, load_eval_cases, report

    cfg = _load(args.config)
    classifier = SpeechActClassifier.load(cfg.resolve_path(cfg.dialogue.speech_acts_path))
    cases = load_eval_cases(cfg.resolve_path(args.cases or cfg.dialogue.speech_acts_eval_path))
    for line in report(classifier, classifier.evaluate(cases)):
        print(line)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(json.dumps(mask_config(cfg.model_dump()), indent=2, ensure_ascii=False))
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    from bot.console.cli import run

    return run(args, _load(args.config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="kefu-hub customer-service bot hub")
    parser.add_argument("--config", help="YAML config file (default: $BOT_CONFIG or config/default.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the hub: gateway (webhooks, widget, /chat), worker (turns), or all")
    serve.add_argument("--role", choices=["gateway", "worker", "all"], default="all",
                       help="gateway and worker need queue.url; all (default) does both in one process")
    serve.set_defaults(func=cmd_serve)
    faq = sub.add_parser("faq-eval", help="FAQ retrieval: top-1/top-3, out-of-scope refusals, per style, confusions")
    faq.add_argument("--cases", action="append", default=None,
                     help="an evaluation file (repeatable); default: " + " and ".join(FAQ_EVAL_FILES))
    faq.add_argument("--holdout", action="store_true", help="also evaluate the held-out " + " and ".join(FAQ_HOLDOUT)
                     + " (figures only)")
    faq.add_argument("--top", type=int, default=20, help="confusions listed per file")
    faq.set_defaults(func=cmd_faq_eval)
    check = sub.add_parser("check-config", help="validate the configuration and print it resolved")
    check.set_defaults(func=cmd_check_config)
    intent = sub.add_parser("intent-eval", help="print intent accuracy on the held-out cases")
    intent.add_argument("--cases", default=None, help="default: dialogue.intents_eval_path")
    intent.set_defaults(func=cmd_intent_eval)
    acts = sub.add_parser("speech-act-eval", help="print request/question/other accuracy on the held-out cases")
    acts.add_argument("--cases", default=None, help="default: dialogue.speech_acts_eval_path")
    acts.set_defaults(func=cmd_speech_act_eval)
    from bot.learning.cli import add_commands as add_learning_commands

    learning = add_learning_commands(sub, _load)
    from bot.ab.report import add_command as add_ab_report

    ab_report = add_ab_report(sub, _load)
    from bot.console.cli import add_parser as add_console

    console = add_console(sub)
    console.set_defaults(func=cmd_console)
    for p in (serve, faq, check, intent, acts, ab_report, console, *learning):
        p.add_argument("--config", dest="config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""Command line: ``python -m bot serve | faq-eval | intent-eval | check-config | data clean``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

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


def cmd_faq_eval(args: argparse.Namespace) -> int:
    from bot.faq import FaqIndex, load_eval_cases

    cfg = _load(args.config)
    index = FaqIndex.load(cfg.resolve_path(cfg.faq.path), cfg.faq.threshold)
    result = index.evaluate(load_eval_cases(cfg.resolve_path(args.cases)))
    print(f"FAQ entries: {len(index.entries)}; held-out cases: {result.total}")
    print(f"top-1 accuracy: {result.accuracy:.1%} ({result.correct}/{result.total})")
    print(f"out-of-scope refused: {result.refusal_rate:.1%} ({result.unknown_refused}/{result.unknown_total})")
    for query, expect, got, score in result.misses:
        print(f"  miss: {query!r} expected {expect} got {got} ({score:.2f})")
    return 0


def cmd_intent_eval(args: argparse.Namespace) -> int:
    from bot.dialogue.intent import IntentRecognizer, load_eval_cases

    cfg = _load(args.config)
    recognizer = IntentRecognizer.load(cfg.resolve_path(cfg.dialogue.intents_path))
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


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(json.dumps(mask_config(cfg.model_dump()), indent=2, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="kefu-hub customer-service bot hub")
    parser.add_argument("--config", help="YAML config file (default: $BOT_CONFIG or config/default.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the hub: gateway (webhooks, widget, /chat), worker (turns), or all")
    serve.add_argument("--role", choices=["gateway", "worker", "all"], default="all",
                       help="gateway and worker need queue.url; all (default) does both in one process")
    serve.set_defaults(func=cmd_serve)
    faq = sub.add_parser("faq-eval", help="print FAQ top-1 accuracy on the held-out paraphrases")
    faq.add_argument("--cases", default="config/faq_eval.yaml")
    faq.set_defaults(func=cmd_faq_eval)
    check = sub.add_parser("check-config", help="validate the configuration and print it resolved")
    check.set_defaults(func=cmd_check_config)
    intent = sub.add_parser("intent-eval", help="print intent accuracy on the held-out cases")
    intent.add_argument("--cases", default=None, help="default: dialogue.intents_eval_path")
    intent.set_defaults(func=cmd_intent_eval)
    from bot.learning.cli import add_commands as add_learning_commands

    learning = add_learning_commands(sub, _load)
    for p in (serve, faq, check, intent, *learning):
        p.add_argument("--config", dest="config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m bot train`` and ``python -m bot eval``: the bot's side of ``engine/training``.

The bot owns what the engine may not know: how a record is framed as a prompt (the same system prompt,
context note and quoted context block ``bot/answer.py`` serves with, so an adapter learns the prompt it will
see), reading record files, and the FAQ-hit rate (``FaqIndex.best``). Every bad input is one line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from bot.config import Config
from bot.learning.clean import Record
from bot.learning.records import RecordFileError, read_records

Loader = Callable[[str | None], Config]


class CliError(Exception):
    """One line for the operator."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def modules(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated module names, e.g. q_proj,v_proj")
    return names


def add_train_eval(sub: argparse._SubParsersAction, load: Loader) -> list[argparse.ArgumentParser]:
    from engine.training.sft import TrainParams

    d = TrainParams()
    train = sub.add_parser("train", help="fine-tune a LoRA adapter on {query, response, context} records (TRL SFT)",
                           description="QLoRA (4-bit base) on CUDA, LoRA in fp32 on CPU. OUT gets checkpoint-N/ per "
                                       "epoch, then the adapter, model_card.json and README.md.")
    train.add_argument("--base", required=True, type=Path, help="the base model directory (a chat model)")
    train.add_argument("--data", required=True, type=Path, help="training records (.json, .jsonl, .csv)")
    train.add_argument("--out", required=True, type=Path, help="where the adapter and checkpoints go")
    train.add_argument("--eval-data", type=Path,
                       help=f"evaluation records (default: {d.eval_share * 100:.0f}%% of --data)")
    train.add_argument("--r", type=positive_int, default=d.r, help=f"LoRA rank (default {d.r})")
    train.add_argument("--alpha", type=positive_int, default=d.alpha, help=f"LoRA alpha (default {d.alpha})")
    train.add_argument("--target", type=modules, default=d.target,
                       help=f"modules to adapt (default {','.join(d.target)})")
    train.add_argument("--dropout", type=unit_float, default=d.dropout, help=f"LoRA dropout (default {d.dropout})")
    train.add_argument("--epochs", type=positive_float, default=d.epochs, help=f"default {d.epochs:g}")
    train.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    train.add_argument("--lr", type=positive_float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    train.add_argument("--max-length", type=positive_int, default=d.max_length, help="tokens per example")
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint-N in OUT")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    train.set_defaults(func=lambda args: _guard("train", cmd_train, args, load))

    ev = sub.add_parser("eval", help="BLEU, chrF, character ROUGE, FAQ-hit rate and latency on held-out records",
                        description="--compare A B evaluates two runs (each 'base', an adapter directory or a "
                                    "results .json from --save) and writes an HTML report.")
    # Not required=True: `eval sample` and `eval ratings FILE` (bot/learning/rating.py) need no model.
    ev.add_argument("--base", type=Path, help="the base model directory (required without a verb)")
    ev.add_argument("--adapter", type=Path, help="a LoRA adapter directory (default: the base alone)")
    ev.add_argument("--data", type=Path, help="held-out records (.json, .jsonl, .csv)")
    ev.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two runs in an HTML report")
    ev.add_argument("--report", type=Path, default=Path("eval-compare.html"), help="where --compare writes")
    ev.add_argument("--save", type=Path, help="write the results (metrics and answers) as JSON")
    ev.add_argument("--max-new-tokens", type=positive_int, default=128)
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ev.add_argument("--no-faq", action="store_true", help="skip the FAQ-hit rate (no FAQ index is built)")
    ev.set_defaults(func=lambda args: _guard("eval", cmd_eval, args, load))
    from bot.learning.rating import add_eval_verbs

    return [train, ev, *add_eval_verbs(ev, load)]


def _guard(name: str, fn: Callable[[argparse.Namespace, Loader], int], args: argparse.Namespace,
           load: Loader) -> int:
    """Known failures as one line and exit 2; nothing here downloads from a model hub."""
    from engine.base import EngineError
    from engine.training.sft import TrainingError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        return fn(args, load)
    except (CliError, TrainingError, EngineError, RecordFileError) as exc:
        print(f"kefu-hub {name}: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f" ({Path(exc.filename).name})" if exc.filename else ""
        print(f"kefu-hub {name}: {exc.strerror or exc}{where}", file=sys.stderr)
    return 2


def records_of(path: Path, what: str) -> list[Record]:
    """Readable records with a query and a response; the rest are counted, not fatal."""
    if not path.is_file():
        raise CliError(f"{what} {str(path)!r} is not a file")
    items = list(read_records(path))
    good = [r for r in items if isinstance(r, Record) and r.query.strip() and r.response.strip()]
    if not good:
        raise CliError(f"{what} {path.name}: no records with a query and a response")
    if len(good) < len(items):
        print(f"{what} {path.name}: skipped {len(items) - len(good)} of {len(items)} records "
              "(unreadable or empty; run `python -m bot data clean` first)")
    return good


def framer_for(cfg: Config) -> Callable[[str, str], list]:
    """The prompt ``Answerer`` sends for a question with no FAQ knowledge: system prompt, context note, block."""
    from bot.answer import CONTEXT_NOTE, context_block
    from engine.base import ChatMessage

    def frame(query: str, context: str) -> list[ChatMessage]:
        system, question = cfg.engine.system_prompt, query
        if context.strip():
            system += "\n" + CONTEXT_NOTE
            question = context_block(context) + "\n\n" + query
        return [ChatMessage("system", system), ChatMessage("user", question)]

    return frame


def _base_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise CliError(f"--base {str(path)!r} is not a model directory (no config.json)")
    return path


def cmd_train(args: argparse.Namespace, load: Loader) -> int:
    from engine.training.sft import TrainParams, train

    cfg = load(getattr(args, "config", None))
    base = _base_dir(args.base)
    records = records_of(args.data, "--data")
    eval_records = records_of(args.eval_data, "--eval-data") if args.eval_data else None
    params = TrainParams(r=args.r, alpha=args.alpha, target=args.target, dropout=args.dropout, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed)
    files = [args.data] + ([args.eval_data] if args.eval_data else [])
    result = train(base, records, args.out, framer_for(cfg), params, eval_records=eval_records, data_files=files,
                   resume=args.resume, device=args.device, progress=not args.no_progress)
    first = f"{result.train_losses[0]:.4f}" if result.train_losses else "-"
    last = f"{result.train_losses[-1]:.4f}" if result.train_losses else "-"
    print(f"trained {result.global_step} steps in {result.seconds:.1f} s"
          + (f" (resumed from {result.resumed_from})" if result.resumed_from else ""))
    print(f"training loss {first} -> {last}; eval loss per epoch: "
          + (", ".join(f"{x:.4f}" for x in result.eval_losses) or "-"))
    print(f"adapter written to {args.out} (model_card.json, README.md)")
    return 0


def cmd_eval(args: argparse.Namespace, load: Loader) -> int:
    from engine.training.evaluate import EvalResult, evaluate
    from engine.training.report import write_compare

    if args.base is None:
        raise CliError("--base is required (or a verb: eval sample, eval ratings FILE)")
    cfg = load(getattr(args, "config", None))
    if args.compare and args.adapter:
        raise CliError("--adapter and --compare exclude each other: name both runs in --compare A B")
    runs = list(args.compare) if args.compare else [str(args.adapter) if args.adapter else "base"]
    needs_model = any(not run.endswith(".json") for run in runs)
    base = _base_dir(args.base) if needs_model else args.base
    if needs_model and args.data is None:
        raise CliError("--data is required unless both runs are saved results (.json)")
    records = records_of(args.data, "--data") if needs_model else []
    faq_hit = None if args.no_faq or not needs_model else _faq_hit(cfg)
    frame = framer_for(cfg)
    results = []
    for run in runs:
        if run.endswith(".json"):
            path = Path(run)
            if not path.is_file():
                raise CliError(f"results file {run!r} not found")
            results.append(EvalResult.load(path))
            continue
        adapter = None if run == "base" else Path(run)
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise CliError(f"{run!r} is not an adapter directory (no adapter_config.json); use 'base' for none")
        results.append(evaluate(base, records, frame, adapter=adapter, max_new_tokens=args.max_new_tokens,
                                device=args.device, faq_hit=faq_hit))
    for result in results:
        print("\n".join(result.lines()))
    if args.save:
        if len(results) != 1:
            raise CliError("--save takes one run; use it without --compare")
        results[0].save(args.save)
        print(f"results written to {args.save}")
    if args.compare:
        print(f"comparison written to {write_compare(results[0], results[1], args.report)}")
    return 0


def _faq_hit(cfg: Config) -> Callable[[str], bool]:
    from bot.faq import FaqIndex
    from bot.faq.rerank import open_reranking

    index = FaqIndex.from_config(cfg.faq, cfg.resolve_path, reranking=open_reranking(cfg.faq, cfg.resolve_path))
    return lambda query: index.best(query) is not None

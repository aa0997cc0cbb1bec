"""``python -m bot train-reranker``: fine-tune the FAQ's cross-encoder (faq.reranker) on the FAQ itself.

Every phrasing of an entry (its question and paraphrases, curated ones included once they are in the file) is a
customer question that entry answers; the entries the lexical retriever ranks next for it are the ones a model
must learn to tell apart (hard negatives), and one random entry keeps the easy cases calibrated. Part of each
entry's paraphrases is held out: the model is scored on them before and after training (the right entry among
the lexical candidates, by the model alone), so the card says what training bought. Those figures are about the
FAQ's own wording; measure customers' wording with ``make faq-eval`` and ``faq.reranker.path`` set.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import TYPE_CHECKING

from bot.learning.tuning import CliError, Loader, _guard, positive_float, positive_int, unit_float
from engine.training.rerank import Pair, RankCase, RerankParams

if TYPE_CHECKING:  # imported where used: every `python -m bot` command builds this parser
    from bot.faq import FaqIndex

CANDIDATES = 10  # lexical candidates a held-out question is ranked among (faq.rerank_top_k's default)


def faq_pairs(index: FaqIndex, *, negatives: int = 4, eval_share: float = 0.15,
              seed: int = 42) -> tuple[list[Pair], list[RankCase]]:
    """Training pairs and held-out ranking cases from the FAQ. An entry's question is always trained on; of its
    paraphrases ``eval_share`` (at least one when it has four or more) are held out."""
    from bot.faq.rerank import passage

    rng = random.Random(seed)
    passages = [passage(e) for e in index.entries]
    slot = {e.id: i for i, e in enumerate(index.entries)}
    pairs: list[Pair] = []
    cases: list[RankCase] = []
    for i, entry in enumerate(index.entries):
        paraphrases = list(entry.paraphrases)
        rng.shuffle(paraphrases)
        held = round(eval_share * len(paraphrases)) if eval_share else 0
        if eval_share and len(paraphrases) >= 4:
            held = max(1, held)
        for text in [entry.question, *paraphrases[held:]]:
            others = [slot[h.entry.id] for h in index.search(text, k=negatives + 2) if h.entry.id != entry.id]
            hard = others[:negatives]
            easy = [j for j in range(len(passages)) if j != i and j not in hard]
            pairs.append(Pair(text, passages[i], 1.0))
            pairs.extend(Pair(text, passages[j], 0.0) for j in [*hard, *rng.sample(easy, min(1, len(easy)))])
        for text in paraphrases[:held]:
            rivals = [slot[h.entry.id] for h in index.search(text, k=CANDIDATES) if h.entry.id != entry.id]
            chosen = [i, *rivals[: CANDIDATES - 1]]
            rng.shuffle(chosen)
            cases.append(RankCase(text, tuple(passages[j] for j in chosen), chosen.index(i)))
    rng.shuffle(pairs)
    return pairs, cases


def add_command(sub: argparse._SubParsersAction, load: Loader) -> argparse.ArgumentParser:
    d = RerankParams()
    cmd = sub.add_parser("train-reranker", help="fine-tune the FAQ re-ranker (a cross-encoder) on the FAQ's phrasings",
                         description="Pairs come from faq.path: each phrasing with its entry (1) and with the entries "
                                     "the lexical retriever confuses it with (0). OUT gets the model, which "
                                     "faq.reranker.path can name, and reranker_card.json.")
    cmd.add_argument("--base", required=True, type=Path,
                     help="a cross-encoder checkpoint with one relevance logit (bge-reranker-base, ...)")
    cmd.add_argument("--out", required=True, type=Path, help="where the trained model goes")
    cmd.add_argument("--negatives", type=positive_int, default=4, help="hard negatives per phrasing (default 4)")
    cmd.add_argument("--eval-share", type=unit_float, default=0.15, help="paraphrases held out per entry")
    cmd.add_argument("--epochs", type=positive_float, default=d.epochs, help=f"default {d.epochs:g}")
    cmd.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    cmd.add_argument("--lr", type=positive_float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    cmd.add_argument("--max-length", type=positive_int, default=d.max_length, help="tokens per pair")
    cmd.add_argument("--seed", type=int, default=d.seed)
    cmd.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    cmd.add_argument("--torch-threads", type=int, default=0, help="CPU threads (default: torch's own choice)")
    cmd.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    cmd.set_defaults(func=lambda args: _guard("train-reranker", cmd_train_reranker, args, load))
    return cmd


def cmd_train_reranker(args: argparse.Namespace, load: Loader) -> int:
    from bot.faq import FaqIndex
    from engine.training.rerank import rank_accuracy, scorer, train, write_card

    cfg = load(getattr(args, "config", None))
    if not args.base.is_dir():
        raise CliError(f"--base {str(args.base)!r} is not a model directory")
    if args.out.resolve() == args.base.resolve():
        raise CliError("--out must not be --base (the base model would be overwritten)")
    index = FaqIndex.from_config(cfg.faq, cfg.resolve_path)  # lexical: the candidates the model will re-rank
    pairs, cases = faq_pairs(index, negatives=args.negatives, eval_share=args.eval_share, seed=args.seed)
    params = RerankParams(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                          seed=args.seed)
    params.check()
    before = rank_accuracy(scorer(args.base, device=args.device, max_length=args.max_length), cases)
    result = train(args.base, pairs, args.out, params, device=args.device, progress=not args.no_progress,
                   threads=max(0, args.torch_threads))
    after = rank_accuracy(scorer(args.out, device=args.device, max_length=args.max_length), cases)
    card = {"base": args.base.name, "faq": Path(cfg.faq.path).name, "entries": len(index.entries),
            "held_out_questions": len(cases), "held_out_accuracy_before": round(before, 4),
            "held_out_accuracy_after": round(after, 4), **result}
    write_card(args.out, card)
    losses = result["losses"]
    print(f"trained on {result['pairs']} pairs ({result['positives']} answering) in {result['seconds']:.1f} s on "
          f"{result['device']}; loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no loss logged")
    print(f"held-out FAQ paraphrases ({len(cases)}), right entry first among {CANDIDATES} lexical candidates by the "
          f"model alone: {before:.1%} before, {after:.1%} after")
    print(f"model and reranker_card.json written to {args.out}; use it with BOT__FAQ__RERANKER__PATH={args.out}")
    return 0

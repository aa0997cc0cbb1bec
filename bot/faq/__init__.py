"""FAQ retrieval (see bot/faq/index.py for how a query is scored)."""

from bot.faq.evaluate import EvalResult
from bot.faq.index import FaqIndex
from bot.faq.model import EvalCase, FaqEntry, FaqHit, load_entries, load_eval_cases
from bot.faq.synonyms import Synonyms

__all__ = ["EvalCase", "EvalResult", "FaqEntry", "FaqHit", "FaqIndex", "Synonyms", "load_entries", "load_eval_cases"]

"""Semantic re-ranking of the FAQ's candidates (bot/faq/rerank.py): what the blend does with a model's scores,
that a failing model leaves lexical matching in place (logged, not cached), that the event loop is not where the
model reads, and that the hub loads a configured cross-encoder from disk and answers with it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest

from bot.config import ROOT, FaqConfig
from bot.faq import FaqIndex
from bot.faq.rerank import Reranking, passage
from bot.services import Services
from tests.bot.dialogue.helpers import chat
from tests.conftest import make_config, start_server

QUERY = "退款审核通过了 钱几天能回来"


def index(reranking: Reranking | None = None) -> FaqIndex:
    return FaqIndex.from_config(FaqConfig(), lambda p: ROOT / p, reranking=reranking)


@pytest.fixture(scope="module")
def lexical() -> FaqIndex:
    return index()


class Prefers:
    """A scorer that finds one entry relevant and nothing else, and records what it was asked."""

    def __init__(self, entry_question: str, fail: bool = False) -> None:
        self.question = entry_question
        self.fail = fail
        self.calls: list[tuple[str, list[str]]] = []
        self.threads: list[int] = []

    def __call__(self, query: str, passages: Sequence[str]) -> list[float]:
        self.calls.append((query, list(passages)))
        self.threads.append(threading.get_ident())
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        return [1.0 if p.startswith(self.question) else 0.0 for p in passages]


def test_the_model_decides_among_the_lexical_candidates(lexical: FaqIndex) -> None:
    lex = lexical.search(QUERY, k=10)
    third = lex[2].entry
    scorer = Prefers(third.question)
    reranked = index(Reranking(scorer, weight=0.7, top_k=5))
    hits = reranked.search(QUERY, k=3)
    assert hits[0].entry.id == third.id and reranked.confident(hits)
    assert hits[0].score == pytest.approx(0.3 * lex[2].score + 0.7, abs=1e-6)
    [(query, passages)] = scorer.calls
    assert query == QUERY  # the customer's words, not the synonym-rewritten ones
    assert passages == [passage(h.entry) for h in lex[:5]]  # only the top_k lexical candidates are read
    assert all(p.startswith(h.entry.question) and len(p) <= len(h.entry.question) + 161 for p, h in
               zip(passages, lex, strict=False))


def test_a_model_that_finds_nothing_relevant_makes_the_faq_refuse(lexical: FaqIndex) -> None:
    assert lexical.confident(lexical.search(QUERY, k=3))
    reranked = index(Reranking(Prefers("no such question"), weight=0.7, top_k=10))
    hits = reranked.search(QUERY, k=3)
    assert not reranked.confident(hits)


def test_a_question_worded_as_an_faq_phrasing_stays_that_entry(lexical: FaqIndex) -> None:
    entry = lexical.entries[0]
    reranked = index(Reranking(Prefers(lexical.entries[1].question), weight=0.9, top_k=10))
    hits = reranked.search(entry.question, k=2)
    assert hits[0].entry.id == entry.id and reranked.confident(hits)


def test_a_failing_model_leaves_lexical_matching_logged_once_and_uncached(
    lexical: FaqIndex, caplog: pytest.LogCaptureFixture
) -> None:
    scorer = Prefers("x", fail=True)
    reranked = index(Reranking(scorer, weight=0.7, top_k=10))
    with caplog.at_level(logging.WARNING, logger="bot.faq.index"):
        first = reranked.search(QUERY, k=3)
        second = reranked.search(QUERY, k=3)
    assert [(h.entry.id, h.score) for h in first] == [(h.entry.id, h.score) for h in lexical.search(QUERY, k=3)]
    assert second == first and len(scorer.calls) == 2  # not cached: the model is asked again
    warnings = [r for r in caplog.records if "re-ranker failed" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError" in warnings[0].getMessage()
    assert "out of memory" not in caplog.text  # the exception's type, not its text


def test_scores_of_the_wrong_shape_count_as_a_failure(lexical: FaqIndex) -> None:
    reranked = index(Reranking(lambda _q, _p: [0.5], weight=0.7, top_k=10))
    assert [h.entry.id for h in reranked.search(QUERY, k=3)] == [h.entry.id for h in lexical.search(QUERY, k=3)]


async def test_asearch_reads_off_the_event_loop_and_then_hits_the_cache() -> None:
    scorer = Prefers("如何重置密码？")
    reranked = index(Reranking(scorer, weight=0.7, top_k=10))
    loop_thread = threading.get_ident()
    hits = await reranked.asearch("密码忘了怎么登录", k=2)
    assert scorer.threads and scorer.threads[0] != loop_thread
    assert reranked.search("密码忘了怎么登录", k=2) == hits and len(scorer.calls) == 1
    await asyncio.gather(*(reranked.asearch("密码忘了怎么登录") for _ in range(5)))
    assert len(scorer.calls) == 1


# ---------------------------------------------------------------- the hub with a cross-encoder on disk
@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from engine.tiny import build_tiny_cross_encoder

    faq = (ROOT / "config" / "faq.yaml").read_text(encoding="utf-8")
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("rerank") / "bert", [faq])


async def test_the_hub_loads_the_configured_cross_encoder_and_answers(
    http: aiohttp.ClientSession, tiny_reranker: Path
) -> None:
    config = make_config({"faq.reranker.path": str(tiny_reranker), "faq.reranker.device": "cpu"})
    services = Services(config)
    reranking = services.answerer.faq.reranking
    assert reranking is not None and reranking.weight == config.faq.rerank_weight
    server = await start_server(config, services)
    try:
        out = await chat(http, server, "rita").say("发票怎么开")
        assert out["answer"]  # the tiny model's scores mean nothing; the turn goes through it and answers
        loose = "买完东西以后 票据这块要怎么弄"  # not worded as a phrasing: its score is the blend
        hits = services.answerer.faq.search(loose, k=1)
        lexical = index().search(loose, k=1)
        assert lexical[0].score < 0.9 and hits[0].score != pytest.approx(lexical[0].score)
    finally:
        await server.close()


def test_a_missing_reranker_model_is_a_configuration_error(tmp_path: Path) -> None:
    config = make_config({"faq.reranker.path": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match=r"faq\.reranker\.path"):
        Services(config)

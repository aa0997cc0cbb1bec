"""The FAQ re-ranker's model side: a cross-encoder checkpoint on disk loads with from_pretrained and scores
(question, entry) pairs in [0, 1], the same whatever the batch size; a wrong path is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.base import EngineError
from engine.config import RerankerConfig

torch = pytest.importorskip("torch")

TEXTS = ["如何重置密码？", "您可以在登录页点击忘记密码", "发票怎么开", "电子发票在我的订单申请开票", "refund invoice"]
PASSAGES = ["如何重置密码？\n您可以在登录页点击“忘记密码”", "发票怎么开？\n电子发票在“我的-订单-申请开票”",
            "How do I get a refund?\nOpen the order", "运费谁出"]


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.tiny import build_tiny_cross_encoder

    return build_tiny_cross_encoder(tmp_path_factory.mktemp("rerank") / "bert", TEXTS + PASSAGES)


def test_scores_every_pair_in_order_within_0_and_1(tiny_reranker: Path) -> None:
    from engine.rerank import CrossEncoder

    model = CrossEncoder(RerankerConfig(path=str(tiny_reranker), device="cpu"))
    scores = model.scores("密码忘了怎么办", PASSAGES)
    assert len(scores) == len(PASSAGES) and all(0.0 <= s <= 1.0 for s in scores)
    assert model.scores("密码忘了怎么办", PASSAGES[::-1]) == pytest.approx(scores[::-1], abs=1e-5)
    assert model.scores("密码忘了怎么办", []) == []


def test_batch_size_does_not_change_the_scores(tiny_reranker: Path) -> None:
    from engine.rerank import CrossEncoder

    one = CrossEncoder(RerankerConfig(path=str(tiny_reranker), device="cpu", batch_size=1))
    many = CrossEncoder(RerankerConfig(path=str(tiny_reranker), device="cpu", batch_size=16))
    assert one.scores("发票", PASSAGES) == pytest.approx(many.scores("发票", PASSAGES), abs=1e-5)


def test_a_long_entry_is_cut_to_max_length_not_refused(tiny_reranker: Path) -> None:
    from engine.rerank import CrossEncoder

    model = CrossEncoder(RerankerConfig(path=str(tiny_reranker), device="cpu", max_length=32))
    [score] = model.scores("发票怎么开" * 20, ["发票" * 400])
    assert 0.0 <= score <= 1.0


def test_a_two_label_checkpoint_reads_the_relevant_label(tmp_path: Path) -> None:
    from engine.rerank import CrossEncoder
    from engine.tiny import build_tiny_cross_encoder

    path = build_tiny_cross_encoder(tmp_path / "two", TEXTS, num_labels=2)
    model = CrossEncoder(RerankerConfig(path=str(path), device="cpu"))
    assert model.labels == 2 and all(0.0 <= s <= 1.0 for s in model.scores("发票", PASSAGES))


def test_a_missing_or_unloadable_model_is_a_clear_error(tmp_path: Path) -> None:
    from engine.rerank import CrossEncoder

    with pytest.raises(EngineError, match=r"faq\.reranker\.path: no model directory"):
        CrossEncoder(RerankerConfig(path=str(tmp_path / "nowhere"), device="cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match=r"faq\.reranker\.path: cannot load"):
        CrossEncoder(RerankerConfig(path=str(tmp_path / "empty"), device="cpu"))


def test_a_relative_path_is_taken_from_the_base_dir(tiny_reranker: Path) -> None:
    from engine.rerank import CrossEncoder

    model = CrossEncoder(RerankerConfig(path=tiny_reranker.name, device="cpu"), base_dir=tiny_reranker.parent)
    assert len(model.scores("发票", PASSAGES[:2])) == 2

"""``python -m bot train-reranker``: pairs from the FAQ (each phrasing with its entry, the lexical neighbours as
hard negatives, held-out paraphrases kept out of training), the sentence-transformers training that saves a
checkpoint engine/rerank.py serves, and the command end to end with its card and clean refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ROOT, FaqConfig
from bot.faq import FaqIndex
from bot.faq.model import load_entries
from bot.faq.rerank import passage
from bot.faq.synonyms import Synonyms
from bot.learning.rerank import CANDIDATES, faq_pairs
from engine.training.rerank import Pair, RerankParams, rank_accuracy
from engine.training.sft import TrainingError

pytest.importorskip("sentence_transformers")
SMALL = ("account-reset-password", "billing-apply-invoice", "refund-how-to-return", "refund-exchange",
         "order-track-shipping", "membership-points-use", "human-contact-agent", "privacy-delete-account")


@pytest.fixture(scope="module")
def shipped() -> FaqIndex:
    return FaqIndex.from_config(FaqConfig(), lambda p: ROOT / p)


@pytest.fixture(scope="module")
def small() -> FaqIndex:
    entries = [e for e in load_entries(ROOT / "config" / "faq.yaml") if e.id in SMALL]
    return FaqIndex(entries, 0.36, Synonyms.load(ROOT / "config" / "synonyms.yaml"))


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.tiny import build_tiny_cross_encoder

    return build_tiny_cross_encoder(tmp_path_factory.mktemp("rerank") / "bert",
                                    [(ROOT / "config" / "faq.yaml").read_text(encoding="utf-8")])


def test_pairs_label_each_phrasing_with_its_entry_and_its_lexical_neighbours(shipped: FaqIndex) -> None:
    pairs, cases = faq_pairs(shipped, negatives=4, eval_share=0.15, seed=7)
    owner = {t: e for e in shipped.entries for t in (e.question, *e.paraphrases)}
    by_query: dict[str, list[Pair]] = {}
    for p in pairs:
        by_query.setdefault(p.query, []).append(p)
    held = {c.query for c in cases}
    assert held and not held & set(by_query)  # a held-out paraphrase is never trained on
    assert all(e.question in by_query for e in shipped.entries)  # every entry's question is
    for entry in shipped.entries:
        if len(entry.paraphrases) >= 4:
            assert any(owner[q] is entry for q in held), entry.id
    for query, rows in by_query.items():
        entry = owner[query]
        assert [p.passage for p in rows if p.label == 1.0] == [passage(entry)]
        negatives = [p.passage for p in rows if p.label == 0.0]
        assert passage(entry) not in negatives and 1 <= len(negatives) <= 5
        lexical = [h.entry for h in shipped.search(query, k=6) if h.entry is not entry]
        assert passage(lexical[0]) in negatives  # the entry it is most easily confused with is a hard negative
    for case in cases:
        assert len(case.passages) <= CANDIDATES and case.passages[case.right] == passage(owner[case.query])
    again, again_cases = faq_pairs(shipped, negatives=4, eval_share=0.15, seed=7)
    assert again == pairs and again_cases == cases  # the seed fixes the split and the order


def test_training_lowers_the_loss_and_saves_a_model_the_hub_serves(small: FaqIndex, tiny_reranker: Path,
                                                                     tmp_path: Path) -> None:
    from engine.training.rerank import scorer, train

    pairs, cases = faq_pairs(small, negatives=3, eval_share=0.15)
    out = tmp_path / "trained"
    result = train(tiny_reranker, pairs, out, RerankParams(epochs=6, lr=3e-3, batch_size=16, max_length=96),
                   device="cpu", progress=False, threads=1)
    losses = result["losses"]
    assert result["pairs"] == len(pairs) and len(losses) >= 5
    assert sum(losses[-3:]) / 3 < losses[0] - 0.05, losses
    assert not (out / "checkpoints").exists()
    before, after = scorer(tiny_reranker, device="cpu"), scorer(out, device="cpu")
    assert before(cases[0].query, cases[0].passages) != pytest.approx(after(cases[0].query, cases[0].passages))
    assert 0.0 <= rank_accuracy(after, cases) <= 1.0
    config = FaqConfig(reranker={"path": str(out), "device": "cpu"})  # type: ignore[arg-type]
    from bot.faq.rerank import open_reranking

    index = FaqIndex.from_config(config, lambda p: ROOT / p, reranking=open_reranking(config, Path))
    assert index.search("发票怎么开", k=1)[0].entry.id == "billing-apply-invoice"  # near exact: stays itself


def test_training_refuses_what_it_cannot_train(small: FaqIndex, tiny_reranker: Path, tmp_path: Path) -> None:
    from engine.tiny import build_tiny_cross_encoder
    from engine.training.rerank import train

    pairs, _ = faq_pairs(small, negatives=2)
    with pytest.raises(TrainingError, match="labelled 1"):
        train(tiny_reranker, [p for p in pairs if p.label == 1.0], tmp_path / "a", device="cpu")
    with pytest.raises(TrainingError, match="--lr"):
        train(tiny_reranker, pairs, tmp_path / "b", RerankParams(lr=0), device="cpu")
    two = build_tiny_cross_encoder(tmp_path / "two", ["发票"], num_labels=2)
    with pytest.raises(TrainingError, match="2 labels"):
        train(two, pairs, tmp_path / "c", device="cpu")
    with pytest.raises(TrainingError, match="not a model directory"):
        train(tmp_path / "nowhere", pairs, tmp_path / "d", device="cpu")


def _bot(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", **env})


@pytest.mark.slow
def test_the_command_trains_writes_its_card_and_faq_eval_uses_the_model(tiny_reranker: Path, tmp_path: Path) -> None:
    out = tmp_path / "faq-reranker"
    done = _bot("train-reranker", "--base", str(tiny_reranker), "--out", str(out), "--epochs", "1",
                "--batch-size", "32", "--lr", "1e-3", "--torch-threads", "1", "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"BOT__FAQ__RERANKER__PATH={out}" in done.stdout and "before" in done.stdout
    card = json.loads((out / "reranker_card.json").read_text(encoding="utf-8"))
    assert card["base"] == tiny_reranker.name and card["entries"] >= 80 and card["pairs"] > card["positives"] > 0
    assert 0 <= card["held_out_accuracy_before"] <= 1 and 0 <= card["held_out_accuracy_after"] <= 1
    evaluated = _bot("faq-eval", "--cases", "config/faq_eval.yaml", BOT__FAQ__RERANKER__PATH=str(out),
                     BOT__FAQ__RERANKER__DEVICE="cpu", BOT__FAQ__RERANKER__TORCH_THREADS="1")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"re-ranked by {out.name}" in evaluated.stdout and "top-1 accuracy" in evaluated.stdout


def test_the_command_refuses_a_bad_base_or_out_in_one_line(tiny_reranker: Path, tmp_path: Path) -> None:
    missing = _bot("train-reranker", "--base", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "not a model directory" in missing.stderr
    assert "Traceback" not in missing.stderr
    same = _bot("train-reranker", "--base", str(tiny_reranker), "--out", str(tiny_reranker))
    assert same.returncode == 2 and "--out must not be --base" in same.stderr
    bad = _bot("faq-eval", BOT__FAQ__RERANKER__PATH=str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "faq.reranker.path" in bad.stderr

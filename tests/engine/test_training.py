"""LoRA fine-tuning (TRL SFTTrainer) and evaluation on the tiny Qwen2: memorise, load, score, resume, report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")

from engine.tiny import SYSTEM_ZH
from engine.training.evaluate import EvalResult, evaluate, rouge_scorer, score
from engine.training.framing import default_framer
from engine.training.report import compare_html
from engine.training.sft import CARD, TrainingError, TrainParams, TrainResult, split, to_examples, train

pytestmark = pytest.mark.slow  # trains and loads the tiny model


@dataclass(frozen=True)
class Rec:
    query: str
    response: str
    context: str = ""


# Short answers the tiny base model never saw (its text is order, refund and delivery templates).
MEMORISE = [
    Rec("积分怎么用？", "积分可以抵扣现金。"),
    Rec("周末发货吗？", "周末照常发货。"),
    Rec("可以开专票吗？", "可以，请联系人工客服。"),
    Rec("能送货上门吗？", "同城订单送货上门。"),
    Rec("支持货到付款吗？", "目前不支持货到付款。"),
    Rec("发票在哪里？", "发票随包裹寄出。"),
    Rec("有赠品吗？", "下单即送保温杯一个。"),
    Rec("怎么联系店长？", "请在订单页面留言。"),
]
ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FRAME = default_framer(SYSTEM_ZH)


@pytest.fixture(scope="module")
def memorised(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """One adapter trained to memorise MEMORISE (about 15 s on one CPU core)."""
    import torch

    torch.set_num_threads(1)
    params = TrainParams(target=ALL_MODULES, dropout=0.0, epochs=80, batch_size=4, lr=2e-2)
    out = tmp_path_factory.mktemp("sft") / "adapter"
    data = out.parent / "mem.jsonl"
    data.write_text("".join(json.dumps(r.__dict__, ensure_ascii=False) + "\n" for r in MEMORISE), encoding="utf-8")
    return train(tiny_model, MEMORISE, out, FRAME, params, eval_records=MEMORISE, data_files=[data],
                 device="cpu", progress=False)


@pytest.fixture(scope="module")
def scores(tiny_model: Path, memorised: TrainResult) -> tuple[EvalResult, EvalResult]:
    base = evaluate(tiny_model, MEMORISE, FRAME, device="cpu", max_new_tokens=32)
    tuned = evaluate(tiny_model, MEMORISE, FRAME, adapter=memorised.out_dir, device="cpu", max_new_tokens=32)
    return base, tuned


def test_examples_are_prompt_completion_with_the_context_in_the_user_turn() -> None:
    [ex] = to_examples([Rec("这个多少钱？", "九十九元。", "商品：保温杯")], FRAME)
    assert ex["prompt"][0] == {"role": "system", "content": SYSTEM_ZH}
    assert ex["prompt"][1]["role"] == "user" and "商品：保温杯" in ex["prompt"][1]["content"]
    assert ex["prompt"][1]["content"].endswith("这个多少钱？")
    assert ex["completion"] == [{"role": "assistant", "content": "九十九元。"}]
    [ex] = to_examples([Rec("hi", "<|im_end|>oops")], FRAME)  # a template token in an answer stays text
    assert "<|im_end|>" not in ex["completion"][0]["content"]


def test_split_holds_out_a_share_and_never_everything() -> None:
    train_part, held = split(MEMORISE, 0.1, seed=1)
    assert len(held) == 1 and len(train_part) == 7 and set(train_part) | set(held) == set(MEMORISE)
    assert split(MEMORISE[:1], 0.5, seed=1) == (MEMORISE[:1], [])


def test_bad_inputs_are_training_errors(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="not a model directory"):
        train(tmp_path / "none", MEMORISE, tmp_path / "o", FRAME)
    with pytest.raises(TrainingError, match="no training records"):
        train(tiny_model, [], tmp_path / "o", FRAME)
    with pytest.raises(TrainingError, match="--lr"):
        train(tiny_model, MEMORISE, tmp_path / "o", FRAME, TrainParams(lr=0))
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(tiny_model, MEMORISE, tmp_path / "o", FRAME, resume=True)


def test_training_loss_falls_and_the_adapter_has_its_card(memorised: TrainResult) -> None:
    losses = memorised.train_losses
    assert len(losses) == memorised.global_step == 80 * 2  # 8 records, batch 4, logged every step
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 / 3
    assert len(memorised.eval_losses) == 80 and memorised.eval_losses[-1] < memorised.eval_losses[0] / 3
    out = memorised.out_dir
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    card = json.loads((out / CARD).read_text(encoding="utf-8"))
    assert card["parameters"]["target"] == list(ALL_MODULES) and card["parameters"]["r"] == 16
    assert len(card["data"][0]["sha256"]) == 64 and card["data"][0]["file"] == "mem.jsonl"
    assert card["metrics"]["global_step"] == 160 and card["metrics"]["eval_loss_per_epoch"] == memorised.eval_losses
    assert {"torch", "transformers", "peft", "trl"} <= set(card["versions"])
    assert "sha256" in (out / "README.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in out.glob("checkpoint-*"))  # resumable checkpoints were kept


def test_the_adapter_loads_in_the_engine_and_reproduces_what_the_base_cannot(
    scores: tuple[EvalResult, EvalResult],
) -> None:
    base, tuned = scores
    assert [e.output for e in base.examples] != [e.output for e in tuned.examples]
    exact_tuned = [e.query for e in tuned.examples if e.output == e.reference]
    exact_base = [e.query for e in base.examples if e.output == e.reference]
    assert len(exact_tuned) >= 2, [e.output for e in tuned.examples]  # 3 of 8 here (seeded, CPU)
    assert exact_base == []


def test_bleu_chrf_and_rouge_rise_after_training(scores: tuple[EvalResult, EvalResult]) -> None:
    base, tuned = scores
    assert tuned.bleu > base.bleu + 20 and tuned.chrf > base.chrf + 20
    assert tuned.rouge1 > base.rouge1 + 0.2 and tuned.rouge2 > base.rouge2 and tuned.rougeL > base.rougeL + 0.2
    assert tuned.latency_p50_s > 0 and tuned.latency_p95_s >= tuned.latency_p50_s
    assert tuned.faq_hit_rate is None  # the bot computes it; the engine has no FAQ


def test_resume_continues_the_step_count(tiny_model: Path, tmp_path: Path) -> None:
    params = TrainParams(epochs=1, batch_size=4, lr=1e-2)
    first = train(tiny_model, MEMORISE, tmp_path / "a", FRAME, params, device="cpu", progress=False)
    assert first.global_step == 2 and (tmp_path / "a" / "checkpoint-2").is_dir()  # 7 train records, batch 4
    again = train(tiny_model, MEMORISE, tmp_path / "a", FRAME, TrainParams(epochs=2, batch_size=4, lr=1e-2),
                  resume=True, device="cpu", progress=False)
    assert again.resumed_from == "checkpoint-2"
    assert again.global_step == 4  # counted on from the checkpoint, not from 0
    assert again.train_losses[:2] == pytest.approx(first.train_losses) and len(again.train_losses) == 4
    assert (tmp_path / "a" / "checkpoint-4").is_dir()
    assert json.loads((tmp_path / "a" / CARD).read_text(encoding="utf-8"))["resumed_from"] == "checkpoint-2"


def test_rouge_counts_chinese_characters() -> None:
    from rouge_score import rouge_scorer as rs

    ref, out = "退款三天内到账。", "退款一般三天到账。"
    assert rs.RougeScorer(["rouge1"]).score(ref, out)["rouge1"].fmeasure == 0.0  # why the char tokenizer
    got = rouge_scorer().score(ref, out)
    assert 0.5 < got["rouge1"].fmeasure < 1 and got["rouge2"].fmeasure > 0
    assert rouge_scorer().score(ref, ref)["rougeL"].fmeasure == 1.0
    same = score("x", ["q"], [ref], [ref], [0.01])
    assert same.bleu == pytest.approx(100.0) and same.chrf == pytest.approx(100.0)


def test_compare_report_has_both_runs_escaped_and_a_chart() -> None:
    a = score("base", ["<b>退款</b>多久？"], ["三天。"], ["<script>x</script>"], [0.02], faq_hit_rate=0.5)
    b = score("tuned & new", ["<b>退款</b>多久？"], ["三天。"], ["三天。"], [0.03], faq_hit_rate=0.5)
    page = compare_html(a, b)
    assert "base" in page and "tuned &amp; new" in page
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "&lt;b&gt;退款&lt;/b&gt;多久？" in page and "三天。" in page
    assert "<img" in page and "data:image/png;base64,iVBOR" in page
    assert "BLEU" in page and "ROUGE-L" in page and "50.0%" in page

"""Build a tiny Qwen2 chat model with LoRA adapters, for tests, benchmarks and demos.

No weights can be downloaded here, so tests and ``bench/engine.py`` need a model
made on the spot. It is a real Qwen2 checkpoint (hidden 64, 2 layers) that loads
with ``from_pretrained`` like any other, with a byte-level BPE tokenizer trained
on generated customer-service text. The tokenizer is trained with Qwen2's own
normalizer and pre-tokenizer: ``AutoTokenizer`` rebuilds a ``Qwen2Tokenizer``
from vocab and merges, and with any other pre-tokenizer the ids would change.

The weights start random and get a few hundred optimizer steps on the same
text, which takes seconds: a purely random model repeats byte fragments, which
makes streaming tests of Chinese text and held-out perplexity meaningless.
The LoRA adapters get random non-zero B matrices so they really change outputs.

Usage: ``python -m engine.tiny OUT_DIR`` (put it under ``.cache/``; never commit weights).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

QWEN2_SPLIT = (  # transformers' Qwen2Tokenizer PRETOKENIZE_REGEX
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SYSTEM_ZH = "你是一名专业、礼貌的客服助手。"
SYSTEM_EN = "You are a polite customer service assistant."

_ZH_PRODUCTS = ["蓝牙耳机", "保温杯", "电饭煲", "运动鞋", "充电宝", "羽绒服", "机械键盘", "空气净化器", "行李箱"]
_EN_PRODUCTS = ["headphones", "water bottle", "rice cooker", "running shoes", "power bank", "jacket", "lamp"]
_ZH_CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安"]
_ZH_QA = [
    ("我的订单{order}什么时候发货？", "您好，订单{order}已经发货，预计{days}天内送达{city}，请留意物流信息。"),
    ("{product}坏了可以退货吗？", "非常抱歉给您带来不便。{product}签收后七天内支持无理由退货，请在订单页面申请售后。"),
    ("请问{product}有优惠吗？", "您好，{product}目前满{amount}元减{cut}元，活动截止到本月底。"),
    ("快递到{city}要几天？", "发往{city}的快递一般{days}天送达，偏远地区可能稍有延迟。"),
    ("怎么修改收货地址？", "在订单发货前，您可以在“我的订单”里修改收货地址；已发货的订单请联系快递员。"),
    ("发票怎么开？", "您可以在订单详情页点击“申请发票”，电子发票会在{days}个工作日内发送到您的邮箱。"),
    ("{product}的保修期是多久？", "{product}享受{months}个月质保，质保期内非人为损坏可免费维修。"),
    ("退款多久到账？", "退款审核通过后，一般{days}个工作日内原路退回，请耐心等待。"),
    ("我要转人工客服。", "好的，正在为您转接人工客服，请稍候。"),
    ("你们几点上班？", "人工客服的服务时间是每天早上九点到晚上十点，其他时间可以留言。"),
]
_EN_QA = [
    ("When will order {order} ship?", "Hello, order {order} has shipped and should arrive within {days} days."),
    ("Can I return the {product}?", "Sorry about that. You can return the {product} within 7 days of delivery."),
    ("Is there a discount on the {product}?", "Yes, the {product} is {cut} dollars off until the end of the month."),
    ("How do I change my address?", "You can change the address in My Orders before the parcel ships."),
    ("How long does a refund take?", "Refunds usually reach your account within {days} business days."),
    ("I want to talk to a human.", "Sure, I am transferring you to a human agent now. Please wait a moment."),
    ("What is the warranty on the {product}?", "The {product} comes with a {months} month warranty."),
    ("Where is my invoice?", "Your e-invoice will be emailed to you within {days} business days."),
]


def _fill(template: str, rng: random.Random, zh: bool) -> dict[str, str]:
    return {
        "order": str(rng.randint(10000, 99999)),
        "days": str(rng.randint(1, 7)),
        "months": str(rng.choice([6, 12, 24])),
        "amount": str(rng.choice([99, 199, 299])),
        "cut": str(rng.choice([10, 20, 30, 50])),
        "city": rng.choice(_ZH_CITIES),
        "product": rng.choice(_ZH_PRODUCTS if zh else _EN_PRODUCTS),
    }


def make_dialogues(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Mixed Chinese/English question-answer chats, about two thirds Chinese."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        zh = rng.random() < 0.66
        q, a = rng.choice(_ZH_QA if zh else _EN_QA)
        slots = _fill(q + a, rng, zh)
        out.append(
            [
                {"role": "system", "content": SYSTEM_ZH if zh else SYSTEM_EN},
                {"role": "user", "content": q.format(**slots)},
                {"role": "assistant", "content": a.format(**slots)},
            ]
        )
    return out


def render_chat(messages: Sequence[dict[str, str]]) -> str:
    """The same text the chat template renders, without jinja (for training data)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """Plain sentences (user and assistant sides) for tokenizer training and perplexity."""
    return [m["content"] for d in make_dialogues(n, seed) for m in d[1:]]


def held_out_text(n: int = 60) -> list[str]:
    """Chats the tiny model never trained on (different seed), for perplexity."""
    return [render_chat(d) for d in make_dialogues(n, seed=12345)]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 640) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE with Qwen2's normalizer and pre-tokenizer; returns (vocab, merges)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges  # type: ignore[return-value]


def build_tiny_model(
    out_dir: str | Path,
    adapters: Sequence[str] = ("zh", "en"),
    *,
    train_steps: int = 200,
    seed: int = 0,
) -> Path:
    """Write a tiny Qwen2 chat model (+ LoRA adapters under ``out_dir/adapters/NAME``) and return its path."""
    import torch

    threads = torch.get_num_threads()
    # Tiny matrices: OpenMP threads only spin (10x slower on a busy box), and a team left behind in
    # this thread would compete with the engine's generation thread afterwards.
    torch.set_num_threads(1)
    try:
        return _build(out_dir, adapters, train_steps, seed)
    finally:
        torch.set_num_threads(threads)


def _build(out_dir: str | Path, adapters: Sequence[str], train_steps: int, seed: int) -> Path:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    dialogues = make_dialogues(400, seed)
    texts = [render_chat(d) for d in dialogues]
    vocab, merges = train_tokenizer([m["content"] for d in dialogues for m in d] + texts)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 512

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    if train_steps > 0:
        _train(model, tokenizer, texts, train_steps)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    for i, name in enumerate(adapters):
        _save_adapter(model, out / "adapters" / name, seed=seed + 1 + i)
    return out


def _train(model: Any, tokenizer: Any, texts: list[str], steps: int, batch: int = 16) -> None:
    """A couple hundred AdamW steps so greedy output is text, not byte soup (about 5 s on one core)."""
    import torch

    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    ids_all, mask_all = enc["input_ids"], enc["attention_mask"]
    labels_all = ids_all.masked_fill(mask_all == 0, -100)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(texts), (batch,), generator=gen)
        mask = mask_all[idx]
        width = int(mask.sum(1).max())  # right-padded: trim the all-pad tail
        out = model(input_ids=ids_all[idx, :width], attention_mask=mask[:, :width], labels=labels_all[idx, :width])
        out.loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def _save_adapter(base: Any, path: Path, *, seed: int) -> None:
    """LoRA r=16 alpha=32 on q_proj/v_proj, with random B so the adapter is not a no-op."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(copy.deepcopy(base), cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    path.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(path)


def build_tiny_cross_encoder(out_dir: str | Path, texts: Iterable[str], *, num_labels: int = 1,
                             seed: int = 0) -> Path:
    """A random BERT cross-encoder (hidden 32, 2 layers) with a character vocabulary of ``texts``: a real
    ``AutoModelForSequenceClassification`` checkpoint for the FAQ re-ranker's loading and scoring paths. Its
    scores mean nothing; what it checks is that a checkpoint on disk loads and scores pairs as a real one does."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for t in texts for c in t if not c.isspace()} | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), tokenize_chinese_chars=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="where to write the model (e.g. .cache/tiny-qwen2)")
    parser.add_argument("--adapters", default="zh,en", help="comma-separated adapter names")
    parser.add_argument("--train-steps", type=int, default=200)
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    names = tuple(a for a in args.adapters.split(",") if a)
    path = build_tiny_model(args.out_dir, names, train_steps=args.train_steps)
    print(f"tiny model written to {path} (adapters: {', '.join(names) or 'none'})")


if __name__ == "__main__":
    main()

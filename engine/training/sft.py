"""LoRA supervised fine-tuning on TRL's ``SFTTrainer`` (``python -m bot train``).

Why TRL and not a loop of our own: the trainer already does what a hand-written loop gets wrong —
completion-only loss for prompt–completion examples under any chat template, evaluation each epoch,
checkpoints that resume with the optimizer, scheduler and step count, a progress bar, QLoRA details.

Each record becomes a conversational prompt–completion example: the prompt is the framing the engine
serves with (system prompt, the context inside the user turn, see ``framing.py``), the completion the
assistant's answer, so the loss covers only the answer. On CUDA the base loads 4-bit (bitsandbytes nf4,
QLoRA); on CPU it trains in fp32 with ``bf16=False`` (SFTConfig defaults to bf16 and gradient
checkpointing, which a CPU does not want). OUT holds ``checkpoint-N/`` per epoch, then the adapter
(``adapter_config.json``, weights), ``model_card.json`` and ``README.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.training.framing import Framer, TrainRecord, completion_messages, prompt_messages

log = logging.getLogger(__name__)

CARD = "model_card.json"


class TrainingError(ValueError):
    """Bad input (paths, numbers, data) worth one line to the operator, not a traceback."""


@dataclass(frozen=True, slots=True)
class TrainParams:
    """The original design's defaults: r 16, alpha 32 on q_proj/v_proj, 3 epochs, batch 4, lr 2e-4."""

    r: int = 16
    alpha: int = 32
    target: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.05
    epochs: float = 3.0
    batch_size: int = 4
    lr: float = 2e-4
    eval_share: float = 0.1  # held out of --data when no --eval-data is given
    max_length: int = 1024  # tokens per example; longer ones are cut from the end
    seed: int = 42
    logging_steps: int = 1
    save_total_limit: int = 3  # checkpoints kept in OUT (one per epoch)

    def check(self) -> None:
        positive = {"r": self.r, "alpha": self.alpha, "epochs": self.epochs, "batch-size": self.batch_size,
                    "lr": self.lr, "max-length": self.max_length}
        for name, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise TrainingError(f"--{name} must be a positive number, got {value}")
        if not 0 <= self.dropout < 1:
            raise TrainingError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.eval_share < 1:
            raise TrainingError(f"the eval share must be in [0, 1), got {self.eval_share}")
        if not self.target or any(not t.strip() for t in self.target):
            raise TrainingError("--target needs at least one module name, e.g. q_proj,v_proj")


@dataclass(slots=True)
class TrainResult:
    out_dir: Path
    global_step: int
    train_losses: list[float]  # logged training losses, in order
    eval_losses: list[float]  # one per epoch
    resumed_from: str | None
    seconds: float
    card: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_examples(records: Sequence[TrainRecord], framer: Framer) -> list[dict[str, list[dict[str, str]]]]:
    """Conversational prompt–completion examples, the shape SFTTrainer trains on the completion only."""
    return [{"prompt": prompt_messages(framer, r), "completion": completion_messages(r)} for r in records]


def split(records: Sequence[TrainRecord], share: float, seed: int) -> tuple[list[TrainRecord], list[TrainRecord]]:
    """(train, eval): a seeded ``share`` of the records held out, at least one when there are two or more."""
    items = list(records)
    if share <= 0 or len(items) < 2:
        return items, []
    random.Random(seed).shuffle(items)
    n_eval = min(len(items) - 1, max(1, round(len(items) * share)))
    return items[n_eval:], items[:n_eval]


def last_checkpoint(out_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None


def train(
    base: str | Path,
    records: Sequence[TrainRecord],
    out_dir: str | Path,
    framer: Framer,
    params: TrainParams = TrainParams(),
    *,
    eval_records: Sequence[TrainRecord] | None = None,
    data_files: Sequence[str | Path] = (),
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> TrainResult:
    """Train a LoRA adapter on ``records`` and save it (with its card) to ``out_dir``."""
    params.check()
    base = Path(base)
    if not (base / "config.json").is_file():
        raise TrainingError(f"--base {str(base)!r} is not a model directory (no config.json)")
    if not records:
        raise TrainingError("no training records")
    out = Path(out_dir)
    checkpoint = last_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise TrainingError(f"--resume: no checkpoint-N directory in {str(out)!r}")

    import torch

    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda but CUDA is not available")
    if eval_records is None:
        train_records, eval_records = split(records, params.eval_share, params.seed)
    else:
        train_records, eval_records = list(records), list(eval_records)

    started = time.perf_counter()
    trainer = _trainer(base, train_records, eval_records, out, framer, params, use_cuda, progress)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))  # the adapter only: adapter_config.json + adapter_model.safetensors
    seconds = time.perf_counter() - started

    history = trainer.state.log_history
    result = TrainResult(
        out_dir=out,
        global_step=int(trainer.state.global_step),
        train_losses=[float(h["loss"]) for h in history if "loss" in h],
        eval_losses=[float(h["eval_loss"]) for h in history if "eval_loss" in h],
        resumed_from=Path(checkpoint).name if checkpoint else None,
        seconds=seconds,
    )
    result.card = _card(base, params, data_files, len(train_records), len(eval_records), result, use_cuda)
    write_card(out, result.card)
    return result


def _trainer(
    base: Path,
    train_records: Sequence[TrainRecord],
    eval_records: Sequence[TrainRecord],
    out: Path,
    framer: Framer,
    params: TrainParams,
    use_cuda: bool,
    progress: bool,
) -> Any:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingError(f"the tokenizer in {str(base)!r} has no chat template; train a chat (instruct) model")
    bf16 = use_cuda and torch.cuda.is_bf16_supported()
    if use_cuda:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if bf16 else torch.float16
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                   bnb_4bit_use_double_quant=True)
        model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, quantization_config=quant,
                                                     dtype=compute, device_map={"": torch.cuda.current_device()})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=torch.float32)

    lora = LoraConfig(r=params.r, lora_alpha=params.alpha, target_modules=list(params.target),
                      lora_dropout=params.dropout, bias="none", task_type="CAUSAL_LM")
    has_eval = bool(eval_records)
    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        learning_rate=params.lr,
        seed=params.seed,
        data_seed=params.seed,
        max_length=params.max_length,
        completion_only_loss=True,
        bf16=bf16,
        fp16=use_cuda and not bf16,
        use_cpu=not use_cuda,
        gradient_checkpointing=use_cuda,  # memory for big models on a GPU; only slows a CPU run down
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="epoch",
        save_total_limit=params.save_total_limit,
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        report_to="none",
        disable_tqdm=not progress,
        dataset_num_proc=None,
        dataloader_num_workers=0,
    )
    with_rows = Dataset.from_list(to_examples(train_records, framer))
    eval_rows = Dataset.from_list(to_examples(eval_records, framer)) if has_eval else None
    return SFTTrainer(model=model, args=args, train_dataset=with_rows, eval_dataset=eval_rows,
                      processing_class=tokenizer, peft_config=lora)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _card(base: Path, params: TrainParams, data_files: Sequence[str | Path], n_train: int, n_eval: int,
          result: TrainResult, qlora: bool) -> dict[str, Any]:
    return {
        "base_model": str(base.resolve()),
        "method": "QLoRA (4-bit nf4 base)" if qlora else "LoRA",
        "data": [{"file": Path(p).name, "sha256": file_sha256(p)} for p in data_files],
        "examples": {"train": n_train, "eval": n_eval},
        "parameters": {**asdict(params), "target": list(params.target)},
        "metrics": {
            "global_step": result.global_step,
            "first_train_loss": result.train_losses[0] if result.train_losses else None,
            "last_train_loss": result.train_losses[-1] if result.train_losses else None,
            "eval_loss_per_epoch": result.eval_losses,
            "train_seconds": round(result.seconds, 2),
        },
        "resumed_from": result.resumed_from,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_card(out: Path, card: dict[str, Any]) -> None:
    """``model_card.json`` for tools, ``README.md`` for people (replacing peft's placeholder card)."""
    (out / CARD).write_text(json.dumps(card, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    m = card["metrics"]
    data = "\n".join(f"- `{d['file']}` sha256 `{d['sha256']}`" for d in card["data"]) or "- (not recorded)"
    params = "\n".join(f"- {k}: {v}" for k, v in card["parameters"].items())
    losses = ", ".join(f"{x:.4f}" for x in m["eval_loss_per_epoch"]) or "(no eval split)"
    readme = (
        f"# LoRA adapter for `{Path(card['base_model']).name}`\n\n"
        f"{card['method']} fine-tune of `{card['base_model']}` with TRL SFTTrainer "
        f"(loss on the answers only). Load it with `engine.adapters: {{NAME: {out.name}}}`.\n\n"
        f"## Data\n{data}\n\n{card['examples']['train']} training and {card['examples']['eval']} evaluation "
        f"examples.\n\n## Parameters\n{params}\n\n## Metrics\n"
        f"- steps: {m['global_step']}\n- training loss: {m['first_train_loss']} -> {m['last_train_loss']}\n"
        f"- evaluation loss per epoch: {losses}\n- training time: {m['train_seconds']} s\n\n"
        f"## Versions\n" + "\n".join(f"- {k} {v}" for k, v in card["versions"].items()) + "\n"
    )
    (out / "README.md").write_text(readme, encoding="utf-8")

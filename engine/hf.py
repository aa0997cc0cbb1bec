"""Local engine: a transformers causal LM with peft LoRA adapters, optional bitsandbytes, dynamic batching.

Why this shape: one process serves many chats, so requests are batched
(``engine/batcher.py``) and each batch is one left-padded ``generate`` call in
a worker thread. Rows may use different LoRA adapters (peft's per-row
``adapter_names``, ``"__base__"`` for the base model) and different sampling
settings (a per-row logits processor), so no request waits for a batch of
"its own kind". A ``BaseStreamer`` subclass turns each step's tokens into
per-row text deltas; a ``StoppingCriteria`` ends rows that hit a stop string,
their own ``max_new_tokens``, their deadline, or whose consumer left, and
ends the whole generation once every row is done.

Heavy imports (torch, transformers, peft) live here only; ``engine.factory``
imports this module lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from engine import prompt as prompts
from engine.base import EngineError, GenerationRequest
from engine.batcher import END, BatchStats, DynamicBatcher, EngineDeadlineExceeded, Item, Slot, deliver
from engine.config import EngineConfig
from engine.streaming import ByteLevelDecoder, IncrementalDecoder, byte_level_table

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in adapter_names
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EngineError(f"engine.device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"engine.device is {name!r} but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 (fp16 on old GPUs) on CUDA, fp32 on CPU (bf16 there only where the bench shows it pays)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise EngineError(f"engine.dtype: expected auto or one of {sorted(_DTYPES)}, got {name!r}") from None


def quantization_config(kind: str, device: torch.device, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for CUDA; on CPU say so and load unquantized.

    bitsandbytes 0.50 imports and even runs on CPU, so nothing would fail: the
    check must be ours, or a CPU deployment silently takes an untested path.
    """
    if kind == "none":
        return None
    if device.type != "cuda":
        log.warning(
            "engine.quantization=%s needs bitsandbytes on CUDA; device is %s, so the model loads "
            "unquantized (%s). Set engine.dtype=bfloat16 to halve memory on CPU.",
            kind,
            device,
            str(dtype).removeprefix("torch."),
        )
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise EngineError(f"engine.quantization={kind} needs the bitsandbytes package: {exc}") from None
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=True,
    )


def _resolve_path(raw: str, base_dir: Path | None, *, model_dir: Path | None = None) -> Path:
    """Relative paths are relative to ``base_dir`` (the caller's root; None: the cwd), adapters first to the model."""
    p = Path(raw).expanduser()
    if p.is_absolute():
        return p
    if model_dir is not None and (model_dir / p).exists():
        return model_dir / p
    return p if base_dir is None else base_dir / p


# --- per-batch helpers (worker thread) ---------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Row:
    slot: Slot
    decoder: ByteLevelDecoder | IncrementalDecoder
    max_new: int
    temperature: float
    top_p: float
    done: bool = False


class _BatchStreamer(BaseStreamer):
    """Per-row streaming for a batched ``generate`` (TextIteratorStreamer only takes batch size 1).

    ``generate`` calls ``put`` once with the prompt ids, then once per step with
    that step's token for every row, after the stopping criteria ran.
    """

    def __init__(self, rows: list[_Row], eos: frozenset[int], loop: asyncio.AbstractEventLoop, stats: BatchStats):
        self._rows = rows
        self._eos = eos
        self._loop = loop
        self._stats = stats
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        out: list[tuple[Slot, Item]] = []
        for row, token in zip(self._rows, value.reshape(-1).tolist(), strict=True):
            if row.done:
                continue
            if row.slot.cancelled:
                row.done = True
                continue
            if token in self._eos:
                self._finish(row, out)
                continue
            self._stats.tokens += 1
            delta = row.decoder.push(token)
            if delta:
                out.append((row.slot, delta))
            if row.decoder.stopped or row.decoder.num_tokens >= row.max_new:
                self._finish(row, out)
        deliver(self._loop, out)

    def end(self) -> None:
        out: list[tuple[Slot, Item]] = []
        for row in self._rows:
            if not row.done:
                self._finish(row, out)
        deliver(self._loop, out)

    @staticmethod
    def _finish(row: _Row, out: list[tuple[Slot, Item]]) -> None:
        row.done = True
        tail = row.decoder.flush()
        if tail:
            out.append((row.slot, tail))
        out.append((row.slot, END))


class _RowStopper(StoppingCriteria):
    """Per-row stop flags: done, consumer gone, past deadline, or at the row's own max_new_tokens.

    When every row is flagged, ``generate`` stops: cancelling all consumers of a
    running batch frees the worker at the next step instead of after max_new_tokens.
    """

    def __init__(self, rows: list[_Row], prompt_len: int, loop: asyncio.AbstractEventLoop, stats: BatchStats):
        self._rows = rows
        self._prompt_len = prompt_len
        self._loop = loop
        self._stats = stats

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self._prompt_len
        now = time.monotonic()
        flags = []
        late: list[tuple[Slot, Item]] = []
        for row in self._rows:
            if not row.done and not row.slot.cancelled and row.slot.expired(now):
                row.done = True
                late.append((row.slot, EngineDeadlineExceeded("deadline passed while generating")))
            flags.append(row.done or row.slot.cancelled or generated >= row.max_new)
        deliver(self._loop, late)
        if all(flags) and generated < max(r.max_new for r in self._rows):
            self._stats.early_stops += 1
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class _RowSampling(LogitsProcessor):
    """Per-row temperature and top-p in one sampling batch; temperature 0 rows stay greedy (argmax)."""

    def __init__(self, rows: list[_Row], device: torch.device):
        self._greedy = torch.tensor([r.temperature <= 0 for r in rows], device=device)
        self._temp = torch.tensor([max(r.temperature, 1e-5) for r in rows], device=device)[:, None]
        self._top_p = torch.tensor([r.top_p for r in rows], device=device)[:, None]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        best = scores.argmax(dim=-1, keepdim=True)
        scores = scores / self._temp
        if bool((self._top_p < 1.0).any()):
            sorted_scores, order = scores.sort(dim=-1)
            cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop = cum <= (1.0 - self._top_p)
            drop[:, -1] = False  # always keep the most likely token
            scores = scores.scatter(1, order, sorted_scores.masked_fill(drop, float("-inf")))
        only_best = torch.full_like(scores, float("-inf")).scatter(1, best, 0.0)
        return torch.where(self._greedy[:, None], only_best, scores)  # type: ignore[return-value]


# --- the engine ----------------------------------------------------------------------------


class HFEngine:
    """Engine protocol over a local transformers model; see the module doc."""

    name = "hf"

    def __init__(self, cfg: EngineConfig, *, base_dir: Path | None = None, ignore_eos: bool = False) -> None:
        """``base_dir``: what relative model and adapter paths are relative to (None: the current directory).
        ``ignore_eos`` (benchmarks only) makes every row generate exactly max_new_tokens."""
        self.cfg = cfg
        self.base_dir = base_dir
        self.ignore_eos = ignore_eos
        self.stats = BatchStats()
        self.state = "new"  # new | loading | ready | failed | closed
        self.error: str | None = None
        self.device: torch.device | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.adapters: tuple[str, ...] = ()
        self._eos: frozenset[int] = frozenset()
        self._context = cfg.context_tokens
        self._batcher: DynamicBatcher | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._start_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._has_template = True
        self._decode_fn: Callable[[Sequence[int]], str] = str
        self._byte_table: list[bytes | None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:  # a second caller waits for the first load instead of loading twice
            if self.state != "ready":
                await self._start()

    async def _start(self) -> None:
        self.state = "loading"
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        # Load and generate on one thread: every thread that runs torch CPU ops gets its own OpenMP
        # team, and idle teams spin; two of them on a 2-core box halved generate speed (bench/engine.py).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        try:
            await loop.run_in_executor(self._executor, self._load)
        except Exception as exc:  # anything from from_pretrained/peft: the hub falls back to FAQ
            self._executor.shutdown(wait=False)
            self._executor = None
            if isinstance(exc, EngineError):
                self.state, self.error = "failed", str(exc)
                raise
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            raise EngineError(f"cannot load model from {self.cfg.model_path!r}: {self.error}") from exc
        self._loop = loop
        self._batcher = DynamicBatcher(
            self._run_batch,
            window_s=self.cfg.batch_window_ms / 1000.0,
            max_batch_size=self.cfg.max_batch_size,
            queue_max=self.cfg.queue_max,
            name="hf",
            stats=self.stats,
            executor=self._executor,
        )
        await self._batcher.start()
        self.state = "ready"
        log.info(
            "hf engine ready: %s on %s (%s%s), adapters: %s, loaded in %.1f s",
            self.cfg.model_path,
            self.device,
            str(self.model.dtype).removeprefix("torch."),
            "" if self.cfg.quantization == "none" or self.device.type != "cuda" else f", {self.cfg.quantization}",
            ", ".join(self.adapters) or "none",
            time.perf_counter() - t0,
        )

    def _load(self) -> None:
        cfg = self.cfg
        if not cfg.model_path:
            raise EngineError("engine.model_path is empty")
        path = _resolve_path(cfg.model_path, self.base_dir)
        if not path.is_dir():
            raise EngineError(f"engine.model_path {str(path)!r} is not a directory")
        if BASE_ADAPTER in cfg.adapters:
            raise EngineError(f"engine.adapters: {BASE_ADAPTER!r} is reserved for the base model")
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        if cfg.torch_threads and device.type == "cpu":
            torch.set_num_threads(cfg.torch_threads)  # process-wide; on a shared box fewer threads spin less
        quant = quantization_config(cfg.quantization, device, dtype)

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.pad_token_id is None:
            raise EngineError("tokenizer has neither a pad nor an eos token")
        kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
        if quant is not None:
            kwargs["quantization_config"] = quant
        if device.type == "cuda":  # load straight onto the GPU instead of through host memory
            kwargs["device_map"] = {"": device.index or 0}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if device.type != "cuda":
            model.to(device)
        if cfg.adapters:
            from peft import PeftModel

            for i, (name, raw) in enumerate(cfg.adapters.items()):
                apath = _resolve_path(raw, self.base_dir, model_dir=path)
                if not apath.is_dir():
                    raise EngineError(f"engine.adapters.{name}: {str(apath)!r} is not a directory")
                if i == 0:
                    model = PeftModel.from_pretrained(model, apath, adapter_name=name, is_trainable=False)
                else:
                    model.load_adapter(apath, adapter_name=name, is_trainable=False)
        model.eval()

        self._has_template = bool(getattr(tokenizer, "chat_template", None))
        if not self._has_template:
            log.warning("tokenizer in %s has no chat template; using a plain transcript prompt", path)
        self._eos = frozenset(_eos_ids(model, tokenizer))
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self._context = min(cfg.context_tokens, limit) if isinstance(limit, int) and limit > 0 else cfg.context_tokens
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.adapters = tuple(cfg.adapters)
        self._decode_fn = _fast_decoder(tokenizer)
        self._byte_table = byte_level_table(tokenizer)  # None: not byte-level BPE, decode windows instead

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the generation thread, after any batch in flight.

        Anything that touches the model (tests, benchmarks, evaluation) must go
        through here: a stream ends as soon as its last token is out, while
        ``generate`` may still be restoring adapter state on the worker thread.
        """
        if self._executor is None:
            raise EngineError(f"hf engine is {self.state}")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def batcher(self) -> DynamicBatcher | None:
        return self._batcher

    async def ready(self) -> bool:
        batcher = self._batcher
        return self.state == "ready" and batcher is not None and batcher.running and not batcher.full()

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)
        self.model = None
        self.tokenizer = None
        if self.state != "failed":
            self.state = "closed"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- requests ------------------------------------------------------------------------------

    def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        if self.state != "ready" or self._batcher is None:
            raise EngineError(f"hf engine is {self.state}" + (f": {self.error}" if self.error else ""))
        if request.adapter is not None and request.adapter not in self.adapters:
            raise EngineError(f"unknown adapter {request.adapter!r}; configured: {', '.join(self.adapters) or 'none'}")
        async with contextlib.aclosing(self._batcher.stream(request)) as deltas:
            async for delta in deltas:
                yield delta

    # -- the worker thread ---------------------------------------------------------------------

    def prompt_ids(self, request: GenerationRequest, max_new: int) -> list[int]:
        """Chat-template the request and fit it into the context left after ``max_new`` tokens.

        The prompt always keeps at least half the context: an oversized max_new_tokens
        shortens the answer's room (see ``_row``), not the question.
        """
        messages = prompts.normalize(request.messages, self.cfg.system_prompt)
        return prompts.fit(self._encode, messages, max(self._context - max_new, self._context // 2, 1))

    def _encode(self, messages: list[prompts.Message]) -> list[int]:
        tok = self.tokenizer
        if self._has_template:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = prompts.plain_template(messages)
        return list(tok(text, add_special_tokens=not self._has_template)["input_ids"])

    def _row(self, slot: Slot) -> tuple[_Row, list[int]]:
        req, cfg = slot.request, self.cfg
        wanted = req.max_new_tokens or cfg.max_new_tokens
        ids = self.prompt_ids(req, wanted)
        max_new = max(1, min(wanted, self._context - len(ids)))
        temperature = cfg.temperature if req.temperature is None else req.temperature
        top_p = cfg.top_p if req.top_p is None else req.top_p
        decoder: ByteLevelDecoder | IncrementalDecoder
        if self._byte_table is not None:
            decoder = ByteLevelDecoder(self._byte_table, cfg.stop)
        else:
            decoder = IncrementalDecoder(self._decode_fn, cfg.stop)
        return _Row(slot=slot, decoder=decoder, max_new=max_new, temperature=temperature, top_p=top_p), ids

    def _run_batch(self, slots: list[Slot]) -> None:
        """One left-padded ``generate`` for the whole batch (runs in the worker thread)."""
        assert self._loop is not None
        model, tok, device = self.model, self.tokenizer, self.device
        if model is None:
            raise EngineError("engine closed")
        built = [self._row(s) for s in slots]
        rows = [row for row, _ in built]
        prompt_rows = [ids for _, ids in built]
        width = max(map(len, prompt_rows))
        pad = tok.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(prompt_rows):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids) :] = 1

        max_new = max(r.max_new for r in rows)
        greedy = all(r.temperature <= 0 for r in rows)
        gen_cfg = copy.deepcopy(model.generation_config)
        gen_cfg.max_new_tokens = max_new
        gen_cfg.max_length = None
        gen_cfg.pad_token_id = pad
        gen_cfg.eos_token_id = sorted(self._eos) or None
        gen_cfg.num_beams = 1
        gen_cfg.do_sample = not greedy
        processors = LogitsProcessorList()
        if greedy:
            gen_cfg.temperature = gen_cfg.top_p = gen_cfg.top_k = None
        else:  # the per-row processor does temperature and top-p; the model's other defaults (top_k...) stay
            gen_cfg.temperature, gen_cfg.top_p = 1.0, 1.0
            processors.append(_RowSampling(rows, device))
        if self.ignore_eos:
            gen_cfg.min_new_tokens = max_new

        kwargs: dict[str, Any] = {}
        scope: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.adapters:
            wanted = {r.slot.request.adapter for r in rows}
            if len(wanted) > 1:  # peft splits each LoRA layer's input per adapter: same result, some overhead
                kwargs["adapter_names"] = [r.slot.request.adapter or BASE_ADAPTER for r in rows]
            elif (only := wanted.pop()) is None:
                scope = model.disable_adapter()
            elif model.active_adapter != only:  # one adapter for the whole batch: the plain (faster) LoRA path
                model.set_adapter(only, inference_mode=True)
        with torch.inference_mode(), scope:
            model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                generation_config=gen_cfg,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([_RowStopper(rows, width, self._loop, self.stats)]),
                streamer=_BatchStreamer(rows, self._eos, self._loop, self.stats),
                **kwargs,
            )


def _eos_ids(model: PreTrainedModel, tokenizer: Any) -> set[int]:
    """Every id that should end an answer: the generation config's (chat models list several) and the tokenizer's."""
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, Sequence):
            ids.update(int(v) for v in value)
    return ids


def _fast_decoder(tokenizer: Any) -> Callable[[Sequence[int]], str]:
    """Decode straight through the Rust tokenizer when there is one: called twice per row per step."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda ids: backend.decode(list(ids), skip_special_tokens=True)
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

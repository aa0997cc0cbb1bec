"""HFEngine on the tiny Qwen2: loading, generation, streaming, mixed adapters, deadlines, cancellation, load errors."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.base import EngineError, EngineOverloaded, generate
from engine.batcher import EngineDeadlineExceeded
from engine.config import EngineConfig
from engine.streaming import REPLACEMENT
from tests.engine.helpers import ask, until

torch = pytest.importorskip("torch")
from engine.hf import HFEngine  # noqa: E402

pytestmark = pytest.mark.slow  # loads the tiny model

QUESTIONS = ("我的订单12345什么时候发货？", "保温杯坏了可以退货吗？", "Can I return the lamp?")


async def started(cfg: EngineConfig, **kwargs: Any) -> HFEngine:
    engine = HFEngine(cfg, **kwargs)
    await engine.start()
    return engine


async def reference(engine: HFEngine, text: str, adapter: str | None, max_new: int) -> tuple[str, list[str]]:
    """Plain model.generate + tokenizer.decode, outside the batcher and streamer (on the engine's thread).

    Returns the decoded answer and each generated token decoded alone.
    """

    def run() -> tuple[str, list[str]]:
        ids = engine.prompt_ids(ask(text, adapter), max_new)
        with torch.inference_mode():
            out = engine.model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new,
                do_sample=False,
                adapter_names=[adapter or "__base__"],
            )
        new = out[0, len(ids) :].tolist()
        tok = engine.tokenizer
        return tok.decode(new, skip_special_tokens=True), [tok.decode([t]) for t in new]

    return await engine.call(run)


def test_tiny_model_is_a_real_qwen2_checkpoint(tiny_model: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoTokenizer

    from engine.tiny import make_sentences

    config = AutoConfig.from_pretrained(tiny_model, local_files_only=True)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("qwen2", 64, 2)
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    raw = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    for s in make_sentences(50, seed=99):  # AutoTokenizer rebuilds Qwen2Tokenizer: ids must not change
        assert tok(s, add_special_tokens=False)["input_ids"] == raw.encode(s, add_special_tokens=False).ids
    assert (tiny_model / "adapters" / "zh" / "adapter_config.json").is_file()
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )


async def test_greedy_generation_equals_plain_generate(hf_engine: HFEngine) -> None:
    for text in QUESTIONS:
        got = await generate(hf_engine, ask(text))
        # Tokens that do not make a whole character (at the end of 24 tokens, or a random model's stray byte
        # tokens inside the text) are dropped by the engine; decode() shows them as U+FFFD
        assert got == (await reference(hf_engine, text, None, 24))[0].replace(REPLACEMENT, "")
        assert got


async def test_chinese_streams_without_replacement_characters(engine_cfg: Callable[..., EngineConfig]) -> None:
    engine = await started(engine_cfg(max_new_tokens=64))
    try:
        text = "保温杯坏了可以退货吗？"
        deltas = [d async for d in engine.stream(ask(text))]
        answer = "".join(deltas)
        expected, pieces = await reference(engine, text, None, 64)
        assert len(deltas) > 3 and any("\u4e00" <= c <= "\u9fff" for c in answer)
        assert all(REPLACEMENT not in d for d in deltas)
        assert answer == expected
        # the answer really has characters split over several tokens (else this test proves little)
        assert any(REPLACEMENT in p for p in pieces)
    finally:
        await engine.close()


async def test_mixed_adapter_batch_equals_individual_runs(engine_cfg: Callable[..., EngineConfig]) -> None:
    engine = await started(engine_cfg(max_batch_size=16))
    try:
        requests = [ask(q, a) for q in QUESTIONS for a in ("zh", "en", None)]
        batched = await asyncio.gather(*(generate(engine, r) for r in requests))
        assert engine.stats.batch_sizes[-1] == len(requests)  # one generate call for all nine
        alone = [await generate(engine, r) for r in requests]
        assert list(engine.stats.batch_sizes)[-len(requests) :] == [1] * len(requests)
        assert batched == alone
        assert len(set(batched)) > len(QUESTIONS)  # the adapters really change the answers
    finally:
        await engine.close()


async def test_greedy_rows_stay_greedy_next_to_sampled_rows(engine_cfg: Callable[..., EngineConfig]) -> None:
    engine = await started(engine_cfg())
    try:
        greedy = ask(QUESTIONS[1], "zh", temperature=0.0)
        sampled = [ask(QUESTIONS[0], None, temperature=1.0, top_p=0.8) for _ in range(3)]
        outs = await asyncio.gather(generate(engine, greedy), *(generate(engine, r) for r in sampled))
        assert engine.stats.batch_sizes[-1] == 4
        assert outs[0] == await generate(engine, greedy)
    finally:
        await engine.close()


async def test_per_row_max_new_tokens_and_stop_strings(engine_cfg: Callable[..., EngineConfig]) -> None:
    engine = await started(engine_cfg())
    try:
        long, short = await asyncio.gather(
            generate(engine, ask(QUESTIONS[0], max_new_tokens=24)),
            generate(engine, ask(QUESTIONS[0], max_new_tokens=4)),
        )
        assert engine.stats.batch_sizes[-1] == 2
        assert short and long.startswith(short) and len(short) < len(long)
    finally:
        await engine.close()
    stop = long[len(long) // 2 : len(long) // 2 + 2]
    engine = await started(engine_cfg(stop=[stop]))
    try:
        assert await generate(engine, ask(QUESTIONS[0])) == long[: long.index(stop)]
    finally:
        await engine.close()


async def test_expired_request_is_not_run(hf_engine: HFEngine) -> None:
    with pytest.raises(EngineError) as info:
        await generate(hf_engine, ask(QUESTIONS[0], deadline=time.monotonic() - 0.1))
    assert isinstance(info.value, EngineDeadlineExceeded) and isinstance(info.value, TimeoutError)
    assert hf_engine.stats.requests == 0 and hf_engine.stats.tokens == 0


async def test_closing_a_stream_frees_the_slot(engine_cfg: Callable[..., EngineConfig]) -> None:
    """One slot, a 300-token answer: closing it after one delta must end that generation at once."""
    engine = await started(engine_cfg(max_batch_size=1, queue_max=1, batch_window_ms=0.0), ignore_eos=True)
    try:
        stream = engine.stream(ask(QUESTIONS[1], max_new_tokens=300))
        assert await anext(stream)
        await stream.aclose()
        assert await generate(engine, ask(QUESTIONS[0], max_new_tokens=5))  # runs after the cancelled one
        assert engine.stats.early_stops == 1
        assert engine.stats.tokens < 300
    finally:
        await engine.close()


async def test_cancelled_row_stops_while_the_batch_finishes(engine_cfg: Callable[..., EngineConfig]) -> None:
    engine = await started(engine_cfg(), ignore_eos=True)
    try:
        alone = await generate(engine, ask(QUESTIONS[2], "en", max_new_tokens=40))
        tokens_before = engine.stats.tokens
        stream = engine.stream(ask(QUESTIONS[1], "zh", max_new_tokens=40))
        other = asyncio.create_task(generate(engine, ask(QUESTIONS[2], "en", max_new_tokens=40)))
        assert await anext(stream)
        await stream.aclose()
        assert await other == alone
        assert engine.stats.batch_sizes[-1] == 2
        assert engine.stats.tokens - tokens_before < 80  # the closed row stopped early
    finally:
        await engine.close()


async def test_full_queue_raises_overloaded(engine_cfg: Callable[..., EngineConfig]) -> None:
    engine = await started(engine_cfg(max_batch_size=1, queue_max=1, batch_window_ms=0.0))
    gate = threading.Event()
    try:
        assert engine._batcher is not None and engine._batcher._executor is not None
        engine._batcher._executor.submit(gate.wait, 10)  # the worker is busy with someone else's batch
        first = asyncio.create_task(generate(engine, ask(QUESTIONS[0])))
        assert await until(lambda: engine.stats.batches == 1)  # taken by the collector, waits for the worker
        second = asyncio.create_task(generate(engine, ask(QUESTIONS[1])))
        assert await until(lambda: engine._batcher is not None and engine._batcher.full())  # waits in the queue
        assert not await engine.ready()
        with pytest.raises(EngineOverloaded):
            await generate(engine, ask(QUESTIONS[2]))
        gate.set()
        assert await first and await second
        assert await engine.ready()
    finally:
        gate.set()
        await engine.close()


async def test_missing_model_path_raises_engine_error(engine_cfg: Callable[..., EngineConfig], tmp_path: Path) -> None:
    engine = HFEngine(engine_cfg(model_path=str(tmp_path / "missing")))
    with pytest.raises(EngineError, match="not a directory"):
        await engine.start()
    assert not await engine.ready()
    with pytest.raises(EngineError):
        await generate(engine, ask("你好"))
    empty = HFEngine(engine_cfg(model_path=str(tmp_path)))  # a directory, but no model in it
    with pytest.raises(EngineError, match="cannot load model"):
        await empty.start()
    assert empty.state == "failed"


async def test_relative_paths_resolve_against_base_dir(
    engine_cfg: Callable[..., EngineConfig], tiny_model: Path
) -> None:
    """The model path is relative to base_dir; an adapter path to the model first, then to base_dir."""
    adapters = {"zh": "adapters/zh", "en": f"{tiny_model.name}/adapters/en"}
    engine = await started(engine_cfg(model_path=tiny_model.name, adapters=adapters), base_dir=tiny_model.parent)
    try:
        assert engine.adapters == ("zh", "en")
    finally:
        await engine.close()
    lost = HFEngine(engine_cfg(model_path=tiny_model.name), base_dir=tiny_model.parent / "elsewhere")
    with pytest.raises(EngineError, match="elsewhere"):
        await lost.start()


async def test_bad_adapter_path_raises_engine_error(engine_cfg: Callable[..., EngineConfig], tmp_path: Path) -> None:
    engine = HFEngine(engine_cfg(adapters={"zh": str(tmp_path / "nope")}))
    with pytest.raises(EngineError, match=r"adapters\.zh"):
        await engine.start()


async def test_unknown_adapter_is_refused(hf_engine: HFEngine) -> None:
    with pytest.raises(EngineError, match="unknown adapter"):
        await generate(hf_engine, ask("你好", "fr"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
@pytest.mark.parametrize("quantization", ["int8", "nf4"])
async def test_quantization_on_cpu_warns_and_loads_unquantized(
    engine_cfg: Callable[..., EngineConfig], caplog: pytest.LogCaptureFixture, quantization: str
) -> None:
    caplog.set_level(logging.WARNING, logger="engine.hf")
    engine = await started(engine_cfg(quantization=quantization))
    try:
        warnings = [
            r for r in caplog.records if r.levelno == logging.WARNING and f"quantization={quantization}" in r.message
        ]
        assert warnings and "unquantized" in warnings[0].message
        modules = {type(m).__module__ for m in engine.model.modules()}
        assert not any("bitsandbytes" in m for m in modules)
        assert all(p.dtype == torch.float32 for p in engine.model.parameters())
        assert await generate(engine, ask(QUESTIONS[0]))
    finally:
        await engine.close()


async def test_ready_follows_the_lifecycle(engine_cfg: Callable[..., EngineConfig]) -> None:
    engine = HFEngine(engine_cfg())
    assert not await engine.ready()
    await engine.start()
    assert await engine.ready() and engine.state == "ready"
    await engine.close()
    assert not await engine.ready() and engine.state == "closed"
    with pytest.raises(EngineError):
        await generate(engine, ask("你好"))


async def test_deadline_passing_mid_stream_raises_and_stops_the_row(engine_cfg: Callable[..., EngineConfig]) -> None:
    engine = await started(engine_cfg(), ignore_eos=True)
    try:
        stream = engine.stream(ask(QUESTIONS[0], max_new_tokens=400, deadline=time.monotonic() + 0.3))
        assert await anext(stream)
        await asyncio.sleep(0.35)  # a slow consumer: the deadline passes while text may still be waiting
        with pytest.raises(EngineDeadlineExceeded):
            async for _ in stream:
                pass
        assert await until(lambda: engine.batcher is not None and not engine.batcher._running)
        assert engine.stats.tokens <= 400
    finally:
        await engine.close()


async def test_close_fails_and_stops_a_running_batch(engine_cfg: Callable[..., EngineConfig]) -> None:
    engine = await started(engine_cfg(), ignore_eos=True)
    stream = engine.stream(ask(QUESTIONS[0], max_new_tokens=400))
    assert await anext(stream)
    await engine.close()  # returns only once the worker thread is done
    with pytest.raises(EngineError, match="closed"):
        async for _ in stream:
            pass
    assert engine.stats.tokens < 400 and engine.stats.early_stops == 1


async def test_oversized_max_new_tokens_keeps_the_question(engine_cfg: Callable[..., EngineConfig]) -> None:
    engine = await started(engine_cfg(), ignore_eos=True)
    try:
        req = ask(QUESTIONS[1], max_new_tokens=100_000)
        prompt = await engine.call(engine.prompt_ids, req, 100_000)
        assert len(prompt) == len(await engine.call(engine.prompt_ids, ask(QUESTIONS[1]), 24))  # not truncated
        assert await generate(engine, req)
        assert engine.stats.tokens == 512 - len(prompt)  # the answer gets the rest of the tiny model's context
    finally:
        await engine.close()

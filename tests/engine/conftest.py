"""Engine fixtures: one tiny Qwen2 (+ zh/en LoRA adapters) built per session, engines started per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.config import EngineConfig


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint on disk (about 5 s to build): loaded with from_pretrained like any model."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from transformers.utils import logging as hf_logging

    from engine.tiny import build_tiny_model

    hf_logging.disable_progress_bar()
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", adapters=("zh", "en"))


@pytest.fixture
def engine_cfg(tiny_model: Path) -> Callable[..., EngineConfig]:
    """EngineConfig for the tiny model; greedy by default so outputs are comparable."""

    def make(**overrides: Any) -> EngineConfig:
        values: dict[str, Any] = {
            "kind": "hf",
            "model_path": str(tiny_model),
            "adapters": {"zh": str(tiny_model / "adapters" / "zh"), "en": str(tiny_model / "adapters" / "en")},
            "temperature": 0.0,
            "max_new_tokens": 24,
            "batch_window_ms": 20.0,
            "max_batch_size": 16,
            "device": "cpu",
            "torch_threads": 1,  # tiny matrices: extra OpenMP threads only spin on a busy CI box
        }
        values.update(overrides)
        return EngineConfig(**values)

    return make


@pytest.fixture
async def hf_engine(engine_cfg: Callable[..., EngineConfig]) -> AsyncIterator[Any]:
    from engine.hf import HFEngine

    engine = HFEngine(engine_cfg())
    await engine.start()
    yield engine
    await engine.close()


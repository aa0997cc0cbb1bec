"""open_engine picks the engine by kind and keeps torch out of cheap imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.base import EngineError
from engine.config import EngineConfig
from engine.factory import UnavailableEngine, open_engine


def test_faq_means_no_engine() -> None:
    assert open_engine(EngineConfig(kind="faq")) is None


def test_openai_kind_gives_the_remote_engine() -> None:
    from engine.remote import RemoteEngine

    assert isinstance(open_engine(EngineConfig(kind="openai")), RemoteEngine)


def test_hf_kind_gives_the_local_engine() -> None:
    pytest.importorskip("torch")
    from engine.hf import HFEngine

    engine = open_engine(EngineConfig(kind="hf", model_path="/nonexistent"))
    assert isinstance(engine, HFEngine) and engine.state == "new"
    assert engine.base_dir is None  # relative paths: the current directory


def test_base_dir_reaches_the_local_engine(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    engine = open_engine(EngineConfig(kind="hf", model_path="model"), base_dir=tmp_path)
    assert engine is not None and engine.base_dir == tmp_path  # type: ignore[attr-defined]


def test_importing_the_factory_does_not_import_torch() -> None:
    code = "import sys, engine.factory, engine.remote, engine.batcher; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=".")
    assert out.stdout.strip() == "False"


async def test_unavailable_engine_fails_at_start_like_a_bad_model() -> None:
    engine = UnavailableEngine("hf", "no torch here")
    with pytest.raises(EngineError, match="no torch"):
        await engine.start()
    assert not await engine.ready()
    with pytest.raises(EngineError):
        async for _ in engine.stream(None):  # type: ignore[arg-type]
            pass
    await engine.close()

"""Read ``config/dialogue.yaml`` and compile it against the configured intents
and LoRA adapters, so a bad graph stops the server at start."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from bot.dialogue.graph import Graph, GraphError, compile_graph


def load_graph(path: str | Path, *, intents: Iterable[str], adapters: Iterable[str] | None = None) -> Graph:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise GraphError(
            f"cannot read the dialogue graph {path}: {exc.strerror} "
            "(set dialogue.enabled: false to answer without a graph)"
        ) from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GraphError(f"dialogue graph {path} is not valid YAML: {exc}") from None
    if spec is None:
        raise GraphError(f"dialogue graph {path} is empty")
    return compile_graph(spec, intents=intents, adapters=adapters, source=f"dialogue graph {path}")

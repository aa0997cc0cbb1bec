"""Canned answers offered beside the reply box: the phrases agents type all day, kept in one YAML file
(``console.canned_path``, default config/canned.yaml) so the team edits them without a release. Read at each
page view (a few lines); an agent still edits the text before it is sent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

MAX_TITLE = 40
MAX_TEXT = 4000  # what one agent reply may hold


@dataclass(frozen=True, slots=True)
class Canned:
    title: str  # the button's label
    text: str  # what fills the reply box


def load_canned(path: Path | str) -> list[Canned]:
    """``canned: [{title, text}]``; no file: none. A malformed file is a ValueError naming the file (its
    content is the operator's, not a secret, but the message names only where and what)."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({type(exc).__name__})") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ValueError(f"{path}: not valid YAML") from None
    if data is None:
        return []
    if not isinstance(data, Mapping) or "canned" not in data:
        raise ValueError(f"{path}: expected 'canned:' with a list of {{title, text}}")
    items = data["canned"] if data["canned"] is not None else []
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected 'canned:' with a list of {{title, text}}")
    out = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, Mapping):
            raise ValueError(f"{path}: canned answer {n} is not a mapping with title and text")
        title, text = item.get("title"), item.get("text")
        if not isinstance(title, str) or not title.strip() or len(title.strip()) > MAX_TITLE:
            raise ValueError(f"{path}: canned answer {n} needs a title of 1-{MAX_TITLE} characters")
        if not isinstance(text, str) or not text.strip() or len(text.strip()) > MAX_TEXT:
            raise ValueError(f"{path}: canned answer {n} needs a text of 1-{MAX_TEXT} characters")
        out.append(Canned(title=title.strip(), text=text.strip()))
    return out

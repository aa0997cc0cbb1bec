"""Print (or ``--write`` into README.md) the configuration table from the typed config and the comments
in config/default.yaml, so the two never drift apart (a test checks the README)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import DEFAULT_CONFIG, Config  # noqa: E402


def comments() -> dict[str, str]:
    """Dotted key -> the comment on its line in default.yaml."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in DEFAULT_CONFIG.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^(\s*)([a-z_]+):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if "#" in rest:
            found[path] = rest.split("#", 1)[1].strip()
    return found


def rows(model: type[BaseModel], prefix: str, notes: dict[str, str]) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += rows(ann, path + ".", notes)
            continue
        default = field.get_default(call_default_factory=True)
        shown = "`\"\"`" if default == "" else f"`{default}`".replace("|", "\\|")
        kind = getattr(ann, "__name__", str(ann)).replace("typing.", "").replace("|", "\\|")
        if "Literal" in str(ann):
            kind = " \\| ".join(str(a) for a in ann.__args__)
        out.append(f"| `{path}` | {kind} | {shown} | {notes.get(path, '').replace('|', '/')} |")
    return out


def table() -> str:
    header = "| key | type | default | meaning |\n| --- | --- | --- | --- |"
    return header + "\n" + "\n".join(rows(Config, "", comments()))


START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def write_readme() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme()
    else:
        print(table())

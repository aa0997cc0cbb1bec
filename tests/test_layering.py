"""Which package may import which, checked on the source with ``ast`` (no imports run).

* ``engine/`` owns its configuration and errors: it imports nothing from ``bot`` or ``adapters``.
* The core ``bot/`` does not import channel packages (``adapters``), except the composition root
  ``bot/app.py`` and the CLI ``bot/__main__.py``, which wire the channels in.
* Production code never imports ``tests``.

Every import counts: at module level, inside functions, under ``if TYPE_CHECKING:``, relative
imports (resolved to the absolute module) and ``importlib.import_module("...")`` / ``__import__``
with a literal name.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "bot", "adapters")
BOT_MAY_IMPORT_ADAPTERS = frozenset({"bot/app.py", "bot/__main__.py"})  # composition root and CLI


def sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _package_of(rel: Path) -> list[str]:
    """The package a module's relative imports start from: ``bot/x/y.py`` -> bot.x, ``bot/x/__init__.py`` -> bot.x."""
    return list(rel.parent.parts)


def imports(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, absolute module imported, the statement as written) for every import in a file."""
    rel = path.relative_to(ROOT)
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=str(rel))
    except SyntaxError as exc:  # pragma: no cover - the file is broken, say which
        pytest.fail(f"{rel}:{exc.lineno}: cannot parse: {exc.msg}")
    lines = source.splitlines()

    def text(node: ast.stmt | ast.expr) -> str:  # the statement as written, on one line
        if node.end_lineno == node.lineno:
            line = lines[node.lineno - 1].encode()  # ast offsets count UTF-8 bytes
            return line[node.col_offset : node.end_col_offset].decode(errors="replace").strip()
        return " ".join(line.strip() for line in lines[node.lineno - 1 : node.end_lineno])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, text(node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(rel)
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module, text(node)
            if not node.module:  # from . import x, y: each name may be a module
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}" if module else alias.name, text(node)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str) and not first.value.startswith("."):
                    yield node.lineno, first.value, text(node)


def _is_in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(
    packages: tuple[str, ...], forbidden: tuple[str, ...], allowed: frozenset[str] = frozenset()
) -> list[str]:
    found = []
    for package in packages:
        for path in sources(package):
            rel = path.relative_to(ROOT).as_posix()
            if rel in allowed:
                continue
            for line, module, text in imports(path):
                if any(_is_in(module, f) for f in forbidden):
                    found.append(f"{rel}:{line}: {text}")
    return sorted(set(found))


def test_the_packages_are_there() -> None:
    for package in PACKAGES:
        assert sources(package), f"no .py files under {package}/"
    for rel in BOT_MAY_IMPORT_ADAPTERS:
        assert (ROOT / rel).is_file(), f"stale exception: {rel} does not exist"


def test_engine_imports_nothing_from_bot_or_adapters() -> None:
    found = violations(("engine",), ("bot", "adapters"))
    assert not found, "engine/ must not import bot or adapters (move what it needs into engine/):\n" + "\n".join(found)


def test_bot_core_does_not_import_adapters() -> None:
    found = violations(("bot",), ("adapters",), BOT_MAY_IMPORT_ADAPTERS)
    exempt = ", ".join(sorted(BOT_MAY_IMPORT_ADAPTERS))
    assert not found, f"bot/ must not import adapters except in {exempt}:\n" + "\n".join(found)


def test_production_code_does_not_import_tests() -> None:
    found = violations(PACKAGES, ("tests",))
    assert not found, "production code must not import tests:\n" + "\n".join(found)


def test_the_checker_sees_every_kind_of_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule that finds nothing because the checker is blind would pass forever."""
    pkg = tmp_path / "engine" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "engine" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .. import config\n")
    (pkg / "m.py").write_text(
        "import os\n"
        "import bot.config\n"
        "from adapters.web import x\n"
        "from . import sibling\n"
        "from ..other import y\n"
        "def f():\n"
        "    from bot import hub\n"
        "    import importlib\n"
        "    importlib.import_module('adapters.registry')\n"
        "    return __import__('tests.fakes')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations(("engine",), ("bot", "adapters")) == [
        "engine/sub/m.py:2: import bot.config",
        "engine/sub/m.py:3: from adapters.web import x",
        "engine/sub/m.py:7: from bot import hub",
        "engine/sub/m.py:9: importlib.import_module('adapters.registry')",
    ]
    assert violations(("engine",), ("tests",)) == ["engine/sub/m.py:10: __import__('tests.fakes')"]
    assert violations(("engine",), ("engine.other",)) == ["engine/sub/m.py:5: from ..other import y"]
    assert violations(("engine",), ("engine.config",)) == ["engine/sub/__init__.py:1: from .. import config"]
    assert violations(("engine",), ("engine.sub.sibling",)) == ["engine/sub/m.py:4: from . import sibling"]

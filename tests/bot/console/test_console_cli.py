"""``python -m bot console ...`` run for real, as an operator would: a subprocess, and a pty for the prompts."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.console.accounts import Accounts, Agent

ROOT = Path(__file__).resolve().parents[3]
PW = "s3cret-passw0rd"


def console(path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BOT__CONSOLE__AGENTS_PATH": str(path)}
    return subprocess.run([sys.executable, "-m", "bot", "console", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "agents.yaml"


def test_add_agent_from_stdin(path: Path) -> None:
    done = console(path, "add-agent", "alice", "--password-stdin", stdin=PW + "\n")
    assert done.returncode == 0, done.stderr
    assert "已添加坐席 alice（agent）" in done.stdout
    assert PW not in done.stdout + done.stderr and "$argon2" not in done.stdout + done.stderr
    assert Accounts(path).verify("alice", PW) == Agent("alice", "agent", "alice")
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    again = console(path, "add-agent", "alice", "--role", "admin", "--display", "小王", "--password-stdin",
                    stdin="another-passw0rd\n")
    assert again.returncode == 0, again.stderr
    assert "已更新坐席 alice（admin）" in again.stdout
    assert Accounts(path).verify("alice", "another-passw0rd") == Agent("alice", "admin", "小王")


def test_short_password_is_refused(path: Path) -> None:
    done = console(path, "add-agent", "alice", "--password-stdin", stdin="short\n")
    assert done.returncode == 2
    assert "至少 8" in done.stderr and "short" not in done.stdout + done.stderr
    assert not path.exists()


def test_bad_name_is_refused(path: Path) -> None:
    done = console(path, "add-agent", "a b", "--password-stdin", stdin=PW + "\n")
    assert done.returncode == 2 and "坐席名" in done.stderr
    assert not path.exists()


def test_list_and_remove(path: Path) -> None:
    Accounts(path).add("alice", PW, display="小王")
    Accounts(path).add("boss", PW, role="admin")
    listed = console(path, "list-agents")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == ["alice\tagent\t小王", "boss\tadmin\tboss"]
    assert "$argon2" not in listed.stdout
    removed = console(path, "remove-agent", "alice")
    assert removed.returncode == 0 and "已删除坐席 alice" in removed.stdout
    assert [a.name for a in Accounts(path).all()] == ["boss"]
    missing = console(path, "remove-agent", "alice")
    assert missing.returncode == 1 and "没有坐席 alice" in missing.stderr


def test_malformed_file_is_reported_not_overwritten(path: Path) -> None:
    path.write_text("agents: {oops\n", encoding="utf-8")
    done = console(path, "add-agent", "alice", "--password-stdin", stdin=PW + "\n")
    assert done.returncode == 2
    assert str(path) in done.stderr and "YAML" in done.stderr
    assert path.read_text(encoding="utf-8") == "agents: {oops\n"


def _prompted(path: Path, *answers: str) -> tuple[int, str]:
    """Runs add-agent on a real terminal (a pty is its controlling tty, as getpass wants) and types
    ``answers`` at its prompts; returns the exit status and everything the terminal showed."""
    env = {**os.environ, "BOT__CONSOLE__AGENTS_PATH": str(path)}
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the CLI at once
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "bot", "console", "add-agent", "bob", "--role", "admin"],
                  env)
    shown = b""
    pending = list(answers)
    prompts_seen = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            text = shown.decode(errors="replace")
            prompts = text.count("密码：") + text.count("再输入一次：")
            while prompts > prompts_seen and pending:
                prompts_seen += 1
                os.write(fd, pending.pop(0).encode() + b"\n")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_prompts_twice_without_echo(path: Path) -> None:
    code, shown = _prompted(path, PW, PW)
    assert code == 0, shown
    assert "密码：" in shown and "再输入一次：" in shown
    assert PW not in shown  # getpass turned echo off
    assert "已添加坐席 bob（admin）" in shown
    assert Accounts(path).verify("bob", PW) == Agent("bob", "admin", "bob")


def test_prompt_mismatch_exits_1(path: Path) -> None:
    code, shown = _prompted(path, PW, PW + "x")
    assert code == 1, shown
    assert "不一致" in shown
    assert not path.exists()

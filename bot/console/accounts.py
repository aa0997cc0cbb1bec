"""Console accounts: agents, their roles and argon2id hashes, in one YAML file (``console.agents_path``).

The file is the only place accounts live, so ``python -m bot console add-agent`` works on a running hub: every
lookup compares the file's identity (inode, size, mtime) with what was read last and reads it again when it
changed. Writes go to a temporary file in the same folder, created with mode 0600, then ``os.replace``: a reader
(another process) sees the old file or the new one, never half of one, and the hashes are never world-readable.

Error messages name the file and what is wrong with it, never a hash or a password: they end up in logs.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

Role = Literal["agent", "admin"]
ROLES: tuple[str, ...] = get_args(Role)

MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 takes any length; a bound keeps a pasted novel from being hashed
MAX_NAME = 64
MAX_DISPLAY = 64

# Letters of any script (CJK included), digits, and ._- ; no spaces, no control or format characters.
_NAME = re.compile(r"[\w.\-]+")
_HEADER = "# 坐席账号（argon2id 哈希）。用 python -m bot console add-agent / remove-agent 管理，勿手工改哈希。\n"


class AccountsError(Exception):
    """The accounts file cannot be read or is malformed, or a name/role/password given is not acceptable.
    The message never contains a password or a hash."""


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    role: Role
    display: str


@dataclass(frozen=True, slots=True)
class _Entry:
    agent: Agent
    hash: str


def check_name(name: str) -> str:
    """The name as stored (NFC, so the same name typed on two keyboards is one account), or AccountsError."""
    name = unicodedata.normalize("NFC", name)
    if not 1 <= len(name) <= MAX_NAME or not _NAME.fullmatch(name):
        raise AccountsError(f"坐席名须为 1-{MAX_NAME} 个字母、数字、汉字或 ._- ，不含空格")
    return name


def check_display(display: str) -> str:
    display = unicodedata.normalize("NFC", display).strip()
    if not 1 <= len(display) <= MAX_DISPLAY or any(unicodedata.category(c)[0] == "C" for c in display):
        raise AccountsError(f"显示名须为 1-{MAX_DISPLAY} 个字符，不含控制字符")
    return display


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountsError(f"密码至少 {MIN_PASSWORD} 个字符")
    if len(password) > MAX_PASSWORD:
        raise AccountsError(f"密码至多 {MAX_PASSWORD} 个字符")


class Accounts:
    """The agents of one accounts file. Thread-safe: the console verifies passwords on worker threads
    (argon2 takes tens of milliseconds of CPU, which must not stall the event loop)."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self._hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory defaults
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int, int] | None = None
        self._entries: dict[str, _Entry] = {}
        self._dummy: str | None = None

    # -- reading -------------------------------------------------------------------------------------------

    def _current(self) -> dict[str, _Entry]:
        """The entries as the file holds them now; read again only when the file changed."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            with self._lock:
                self._signature, self._entries = None, {}
            return {}
        except OSError as exc:
            raise AccountsError(f"{self.path}: 无法读取账号文件（{type(exc).__name__}）") from None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if signature == self._signature:
                return self._entries
        entries = self._read()
        with self._lock:
            self._signature, self._entries = signature, entries
        return entries

    def _read(self) -> dict[str, _Entry]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except UnicodeDecodeError:
            raise AccountsError(f"{self.path}: 账号文件不是 UTF-8 文本") from None
        except OSError as exc:
            raise AccountsError(f"{self.path}: 无法读取账号文件（{type(exc).__name__}）") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            # Only the position and the parser's complaint: its snippet of the line could quote a hash.
            mark = getattr(exc, "problem_mark", None)
            where = f"第 {mark.line + 1} 行" if mark is not None else "某处"
            problem = getattr(exc, "problem", None) or "语法错误"
            raise AccountsError(f"{self.path}: YAML 格式错误（{where}：{problem}）") from None
        return self._parse(data)

    def _parse(self, data: Any) -> dict[str, _Entry]:
        if data is None:
            return {}
        if not isinstance(data, dict) or not isinstance(data.get("agents", []), list):
            raise AccountsError(f"{self.path}: 须为 `agents: [...]` 列表")
        entries: dict[str, _Entry] = {}
        for i, item in enumerate(data.get("agents") or []):
            where = f"{self.path}: agents[{i}]"
            if not isinstance(item, dict):
                raise AccountsError(f"{where}: 须为含 name/role/hash 的映射")
            unknown = set(item) - {"name", "role", "display", "hash"}
            if unknown:
                raise AccountsError(f"{where}: 未知字段 {', '.join(sorted(map(str, unknown)))}")
            name, role, display, hashed = (item.get(k) for k in ("name", "role", "display", "hash"))
            role = "agent" if role is None else role
            if not isinstance(name, str):
                raise AccountsError(f"{where}: 缺少 name")
            try:
                name = check_name(name)
                display = check_display(display if isinstance(display, str) and display.strip() else name)
            except AccountsError as exc:
                raise AccountsError(f"{where}: {exc}") from None
            if role not in ROLES:
                raise AccountsError(f"{where} ({name}): role 须为 agent 或 admin")
            if not isinstance(hashed, str) or not hashed.startswith("$argon2"):
                raise AccountsError(f"{where} ({name}): hash 缺失或不是 argon2 哈希")
            if name in entries:
                raise AccountsError(f"{where}: 坐席名 {name} 重复")
            entries[name] = _Entry(Agent(name, role, display), hashed)
        return entries

    def get(self, name: str) -> Agent | None:
        entry = self._current().get(unicodedata.normalize("NFC", name))
        return entry.agent if entry is not None else None

    def all(self) -> list[Agent]:
        return [e.agent for e in self._current().values()]

    def verify(self, name: str, password: str) -> Agent | None:
        """The agent when the password is theirs. An unknown name is checked against a dummy hash, so the time
        taken does not say whether a name exists. A hash made with weaker parameters than today's is replaced
        on success (best effort: a read-only file only keeps the old one)."""
        entry = self._current().get(unicodedata.normalize("NFC", name)) if len(name) <= MAX_NAME else None
        hashed = entry.hash if entry is not None else self._dummy_hash()
        try:
            self._hasher.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return None
        if entry is None:  # pragma: no cover - the dummy's password is random and thrown away
            return None
        if self._hasher.check_needs_rehash(entry.hash):
            with contextlib.suppress(AccountsError, OSError):
                self._rehash(entry, password)
        return entry.agent

    def _dummy_hash(self) -> str:
        with self._lock:
            if self._dummy is None:
                self._dummy = self._hasher.hash(secrets.token_urlsafe(24))
            return self._dummy

    # -- writing -------------------------------------------------------------------------------------------

    def add(self, name: str, password: str, role: Role = "agent", display: str | None = None) -> Agent:
        """Create or update an account (a new password replaces the old hash). A malformed file is not
        overwritten: AccountsError, so nobody's account is lost to a typo."""
        name = check_name(name)
        check_password(password)
        if role not in ROLES:
            raise AccountsError("role 须为 agent 或 admin")
        entries = dict(self._current())
        old = entries.get(name)
        if display is None or not display.strip():
            display = old.agent.display if old is not None else name
        agent = Agent(name, role, check_display(display))
        entries[name] = _Entry(agent, self._hasher.hash(password))
        self._write(entries)
        return agent

    def remove(self, name: str) -> bool:
        entries = dict(self._current())
        if entries.pop(unicodedata.normalize("NFC", name), None) is None:
            return False
        self._write(entries)
        return True

    def _rehash(self, entry: _Entry, password: str) -> None:
        entries = dict(self._read())  # from the disk, not the cache: another process may have just written
        current = entries.get(entry.agent.name)
        if current is None or current.hash != entry.hash:
            return
        entries[entry.agent.name] = _Entry(current.agent, self._hasher.hash(password))
        self._write(entries)

    def _write(self, entries: dict[str, _Entry]) -> None:
        data = {"agents": [{"name": e.agent.name, "role": e.agent.role, "display": e.agent.display, "hash": e.hash}
                           for e in entries.values()]}
        text = _HEADER + yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=1000)
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)  # whatever the umask said
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise AccountsError(f"{self.path}: 无法写入账号文件（{type(exc).__name__}）") from None
        with contextlib.suppress(OSError):  # the rename itself survives a crash only once the folder is synced
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        with self._lock:
            self._signature = None  # read back at the next lookup, whatever the clock's granularity

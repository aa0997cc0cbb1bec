"""Console accounts: argon2id hashes in a YAML file, written atomically with mode 0600, re-read when it changes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from bot.console.accounts import Accounts, AccountsError, Agent

PW = "correct horse battery"


class CountingHasher(PasswordHasher):
    """Counts verifications: an unknown name must cost one as well (no timing oracle for names)."""

    def __init__(self, **kw: int) -> None:
        super().__init__(**kw)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verifications += 1
        return super().verify(hash, password)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "conf" / "agents.yaml"


def test_add_then_verify_get_all(path: Path) -> None:
    accounts = Accounts(path)
    assert accounts.all() == [] and accounts.get("alice") is None  # no file yet: no accounts
    alice = accounts.add("alice", PW)
    boss = accounts.add("老板", PW + "!", role="admin", display="王总")
    assert alice == Agent("alice", "agent", "alice")
    assert boss == Agent("老板", "admin", "王总")
    assert accounts.verify("alice", PW) == alice
    assert accounts.verify("老板", PW + "!") == boss
    assert accounts.verify("alice", PW + "x") is None
    assert accounts.verify("nobody", PW) is None
    assert accounts.get("alice") == alice
    assert [a.name for a in accounts.all()] == ["alice", "老板"]


def test_file_is_private_atomic_and_holds_no_password(path: Path) -> None:
    Accounts(path).add("alice", PW, display="小王")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text(encoding="utf-8")
    assert PW not in text
    assert "$argon2id$" in text and "小王" in text  # CJK as is, not escaped
    assert [p.name for p in path.parent.iterdir()] == ["agents.yaml"]  # no temporary file left behind


def test_existing_name_gets_new_hash_role_and_keeps_display(path: Path) -> None:
    accounts = Accounts(path)
    accounts.add("alice", PW, display="小王")
    updated = accounts.add("alice", "another password", role="admin")
    assert updated == Agent("alice", "admin", "小王")
    assert accounts.verify("alice", PW) is None
    assert accounts.verify("alice", "another password") == updated
    assert len(accounts.all()) == 1


def test_changes_by_another_process_are_seen_without_restart(path: Path) -> None:
    running = Accounts(path)  # the hub's
    assert running.get("alice") is None
    cli = Accounts(path)  # `python -m bot console add-agent`
    cli.add("alice", PW)
    assert running.verify("alice", PW) == Agent("alice", "agent", "alice")
    cli.add("alice", PW, role="admin")
    assert running.get("alice") == Agent("alice", "admin", "alice")
    assert cli.remove("alice") is True
    assert running.get("alice") is None
    assert cli.remove("alice") is False


def test_unknown_names_still_cost_one_hash(path: Path) -> None:
    hasher = CountingHasher()
    accounts = Accounts(path, hasher=hasher)
    accounts.add("alice", PW)
    assert accounts.verify("nobody", PW) is None
    assert hasher.verifications == 1
    assert accounts.verify("alice", "wrong password") is None
    assert hasher.verifications == 2
    assert accounts.verify("x" * 500, PW) is None  # too long to be a name: still one hash
    assert hasher.verifications == 3


def test_weak_hash_is_upgraded_on_sign_in(path: Path) -> None:
    Accounts(path, hasher=PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)).add("alice", PW)
    assert "m=8192,t=1,p=1" in path.read_text()
    accounts = Accounts(path)  # today's parameters
    assert accounts.verify("alice", PW) is not None
    text = path.read_text()
    assert "m=8192,t=1,p=1" not in text and "m=65536,t=3,p=4" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert accounts.verify("alice", PW) is not None


@pytest.mark.parametrize("name", ["", "a b", "tab\tname", "new\nline", "x" * 65, "semi;colon", "a/b", "零\u200b宽"])
def test_bad_names_are_refused(path: Path, name: str) -> None:
    with pytest.raises(AccountsError):
        Accounts(path).add(name, PW)
    assert not path.exists()


@pytest.mark.parametrize("name", ["alice", "bob.smith", "li-na_2", "小王", "客服01"])
def test_good_names(path: Path, name: str) -> None:
    assert Accounts(path).add(name, PW).name == name


def test_short_password_and_bad_role_are_refused(path: Path) -> None:
    accounts = Accounts(path)
    with pytest.raises(AccountsError, match="至少 8"):
        accounts.add("alice", "1234567")
    with pytest.raises(AccountsError):
        accounts.add("alice", PW, role="root")  # type: ignore[arg-type]
    assert not path.exists()


HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2VjcmV0c2FsdA$c2VjcmV0aGFzaHZhbHVlc2VjcmV0aGFzaA"


@pytest.mark.parametrize("text, problem", [
    (f'agents:\n- name: alice\n  hash: "{HASH}\n', "YAML"),  # unterminated quote on the hash's line
    (f"agents:\n  name: alice\n  hash: {HASH}\n", "agents"),
    (f"- name: alice\n  hash: {HASH}\n", "agents"),
    (f"agents:\n- name: alice\n  role: root\n  hash: '{HASH}'\n", "role"),
    ("agents:\n- name: alice\n  hash: plaintext-password\n", "hash"),
    (f"agents:\n- name: a b\n  hash: '{HASH}'\n", "agents[0]"),
    (f"agents:\n- name: alice\n  hash: '{HASH}'\n- name: alice\n  hash: '{HASH}'\n", "重复"),
    (f"agents:\n- name: alice\n  password: x\n  hash: '{HASH}'\n", "password"),
])
def test_malformed_file_names_file_and_problem_never_the_hash(path: Path, text: str, problem: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    accounts = Accounts(path)
    with pytest.raises(AccountsError) as caught:
        accounts.get("alice")
    message = str(caught.value)
    assert str(path) in message and problem in message
    assert HASH not in message and "c2VjcmV0" not in message and "plaintext-password" not in message
    with pytest.raises(AccountsError):
        accounts.verify("alice", PW)
    with pytest.raises(AccountsError):  # a broken file is not overwritten: nobody's account is lost
        accounts.add("bob", PW)
    assert path.read_text(encoding="utf-8") == text


def test_empty_file_and_not_utf8(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("", encoding="utf-8")
    assert Accounts(path).all() == []
    path.write_bytes(b"agents: [\xff]\n")
    with pytest.raises(AccountsError, match="UTF-8"):
        Accounts(path).all()

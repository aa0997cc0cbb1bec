"""``python -m bot console add-agent | remove-agent | list-agents``: the console's accounts, on the server.

Accounts are managed here rather than in the console so that the first admin needs no console to exist, and a
password never travels through a web form other than the sign-in one. The file is re-read by running hubs when it
changes: no restart. Nothing printed here contains a password or a hash.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from bot.config import Config
from bot.console.accounts import MAX_PASSWORD, MIN_PASSWORD, Accounts, AccountsError, check_name


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``console`` command and its sub-commands, on the top-level sub-parsers of ``python -m bot``."""
    console = sub.add_parser("console", help="agent console accounts: add-agent | remove-agent | list-agents")
    commands = console.add_subparsers(dest="console_command", required=True)
    add = commands.add_parser("add-agent", help="add an agent, or set an existing agent's password/role")
    add.add_argument("name", help="sign-in name: letters, digits, CJK, ._- (1-64)")
    add.add_argument("--role", choices=["agent", "admin"], default="agent", help="admin may also curate the FAQ")
    add.add_argument("--display", default=None, help="name shown in the console (default: the sign-in name)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from one line of stdin instead of prompting twice")
    remove = commands.add_parser("remove-agent", help="remove an agent; their sessions end at their next request")
    remove.add_argument("name")
    listing = commands.add_parser("list-agents", help="list agents (names, roles, display names)")
    for p in (add, remove, listing):
        p.add_argument("--config", dest="config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return console


def _password(args: argparse.Namespace) -> str | int:
    """The new password, or an exit status: 1 when the two prompts differ, 2 when it is too short or long."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass("密码：")
            again = getpass.getpass("再输入一次：")
        except (EOFError, KeyboardInterrupt):
            print("\n已取消", file=sys.stderr)
            return 1
        if password != again:
            print("两次输入的密码不一致，未作修改", file=sys.stderr)
            return 1
    if len(password) < MIN_PASSWORD:
        print(f"密码太短：至少 {MIN_PASSWORD} 个字符", file=sys.stderr)
        return 2
    if len(password) > MAX_PASSWORD:
        print(f"密码太长：至多 {MAX_PASSWORD} 个字符", file=sys.stderr)
        return 2
    return password


def run(args: argparse.Namespace, cfg: Config) -> int:
    accounts = Accounts(cfg.resolve_path(cfg.console.agents_path))
    try:
        if args.console_command == "list-agents":
            agents = accounts.all()
            if not agents:
                print(f"（没有坐席账号：{accounts.path}）")
            for a in agents:
                print(f"{a.name}\t{a.role}\t{a.display}")
            return 0
        if args.console_command == "remove-agent":
            if not accounts.remove(args.name):
                print(f"没有坐席 {args.name}", file=sys.stderr)
                return 1
            print(f"已删除坐席 {args.name}（其会话在下次操作时结束）")
            return 0
        check_name(args.name)
        existed = accounts.get(args.name) is not None  # a broken file is refused before asking for a password
        password = _password(args)
        if isinstance(password, int):
            return password
        agent = accounts.add(args.name, password, role=args.role, display=args.display)
    except AccountsError as exc:
        print(f"kefu-hub: {exc}", file=sys.stderr)
        return 2
    verb = "已更新" if existed else "已添加"
    print(f"{verb}坐席 {agent.name}（{agent.role}）· 显示名 {agent.display} · {accounts.path}")
    return 0

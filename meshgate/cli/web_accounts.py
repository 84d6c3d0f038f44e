"""`meshgate accounts set-password NAME` and `meshgate accounts invite`: web log-in for CLI accounts, invite codes.

The password is read from the terminal (asked twice, not echoed) or, when stdin is not a
terminal, from its first line: never from the command line, where `ps` and shell history see it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from meshgate.accounts.passwords import PasswordError
from meshgate.accounts.service import AccountStore
from meshgate.accounts.sessions import SessionStore

ACTIONS = ("set-password", "invite")


def add_parsers(accounts: Any) -> None:
    """Adds the sub-commands to `meshgate accounts`."""
    accounts.add_parser(
        "set-password", help="set an account's web password (read from the terminal or stdin, never argv)"
    ).add_argument("name")
    invite = accounts.add_parser("invite", help="make an invite code for MESHGATE_SIGNUP=invite (printed once)")
    invite.add_argument("--days", type=float, default=7.0, help="how long the code stays valid (default 7)")


def run(args: argparse.Namespace, store: AccountStore) -> int:
    if args.action == "invite":
        code = SessionStore(store.engine).create_invite(None, args.days * 86400)
        print(f"invite code (valid {args.days:g} days; sign up at /signup?invite=CODE):", file=sys.stderr)
        print(code)
        return 0
    account = store.require_account(args.name)
    password = _read_password()
    if password is None:
        return 2
    try:
        store.set_password(account.id, password)
    except PasswordError as error:
        print(f"meshgate: {error}", file=sys.stderr)
        return 2
    print(f"password set for {account.name}: log in at /login with the name {account.name!r}")
    return 0


def _read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != first:
            print("meshgate: the passwords differ", file=sys.stderr)
            return None
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")

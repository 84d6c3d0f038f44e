"""Accounts in the browser: sign up (the first account is admin), log out and in, wrong passwords
and their rate limit, change password, CLI accounts with a password."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from tests.conftest import MESHGATE, ROOT, FakeUpstream, LiveGateway, stop
from tests.web.conftest import (
    PASSWORD,
    LoggedIn,
    WebAccount,
    log_in,
    log_out,
    new_email,
    sign_up,
    start_web_gateway,
)


def test_first_signup_is_admin_then_log_out_and_in(
    browser: Browser, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    # A gateway of its own: its first sign-up must be this test's.
    gw = start_web_gateway(tmp_path, fake_upstream)
    try:
        context = browser.new_context(base_url=f"http://127.0.0.1:{gw.port}")
        context.set_default_timeout(20_000)
        page = context.new_page()
        page.goto("/")
        expect(page).to_have_url(f"http://127.0.0.1:{gw.port}/login")
        first = new_email("first")
        sign_up(page, first)
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name="Admin")).to_be_visible()
        page.goto("/admin")
        expect(page.get_by_role("heading", name="Admin", exact=True)).to_be_visible()
        log_out(page)
        page.goto("/keys")
        expect(page).to_have_url(f"http://127.0.0.1:{gw.port}/login?next=/keys")

        second = new_email("second")
        other = browser.new_context(base_url=f"http://127.0.0.1:{gw.port}")
        other.set_default_timeout(20_000)
        second_page = other.new_page()
        sign_up(second_page, second)
        expect(second_page.get_by_role("link", name="Keys")).to_be_visible()
        expect(second_page.get_by_role("link", name="Admin")).to_have_count(0)
        assert second_page.goto("/admin").status == 403  # type: ignore[union-attr]

        # Log in again, landing where the log-in page was sent from.
        page.get_by_label("Email").fill(first.upper())  # emails are names, compared in lower case
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"http://127.0.0.1:{gw.port}/keys")
        expect(page.get_by_role("link", name="Admin")).to_be_visible()
        accounts = gw.query("SELECT name, is_admin FROM accounts ORDER BY id")
        assert [(n, bool(a)) for n, a in accounts] == [(first, True), (second, False)]
        context.close()
        other.close()
    finally:
        assert gw.process is not None
        stop(gw.process)


def test_wrong_password_is_refused_then_rate_limited(new_page: Callable[..., Page], admin_user: WebAccount) -> None:
    page = new_page()
    account = WebAccount(new_email())
    sign_up(page, account.email)
    log_out(page)
    log_in(page, account.email, "not the password")
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    expect(page.get_by_label("Email")).to_have_value(account.email)  # kept; the password is not
    expect(page.get_by_label("Password")).to_have_value("")
    log_in(page, "nobody-" + account.email, "whatever1")
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")  # the same for unknown names

    for _ in range(2):  # 3 failures per account (the fixture's limit)
        log_in(page, account.email, "still wrong")
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    response = page.request.post("/login", form={"email": account.email, "password": account.password})
    assert response.status == 403  # no CSRF token: refused before any password is looked at
    log_in(page, account.email, account.password)  # even the right password waits now
    expect(page.get_by_role("alert")).to_contain_text("Too many failed log-ins: try again in")
    assert page.title().startswith("Log in")


def test_rate_limited_page_answers_429(new_page: Callable[..., Page], admin_user: WebAccount) -> None:
    page = new_page()
    email = new_email("limited")
    statuses = []
    for _ in range(4):
        page.goto("/login")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill("wrong password")
        with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as answer:
            page.get_by_role("button", name="Log in").click()
        statuses.append(answer.value.status)
    assert statuses == [401, 401, 401, 429]
    assert answer.value.headers["retry-after"].isdigit()


def test_change_password(logged_in: LoggedIn, new_page: Callable[..., Page]) -> None:
    page, account = logged_in.page, logged_in.account
    elsewhere = new_page()  # the same account in another browser
    log_in(elsewhere, account.email)
    expect(elsewhere.get_by_role("button", name="Log out")).to_be_visible()

    page.goto("/account/password")
    page.get_by_label("Current password").fill("wrong current password")
    page.get_by_label("New password").fill("a new password 2")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_have_text("The current password is wrong.")
    page.get_by_label("Current password").fill(account.password)
    page.get_by_label("New password").fill("short")
    page.evaluate("document.querySelector('#new_password').removeAttribute('minlength')")  # past the browser's check
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_contain_text("at least 8 characters")
    page.get_by_label("Current password").fill(account.password)
    page.get_by_label("New password").fill("a new password 2")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_contain_text("Password changed")

    elsewhere.goto("/keys")  # the other browser was logged out
    assert "/login" in elsewhere.url
    log_out(page)
    log_in(page, account.email, account.password)
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    log_in(page, account.email, "a new password 2")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def test_cli_account_gets_a_password_and_logs_in(
    web_gateway: LiveGateway, new_page: Callable[..., Page], admin_user: WebAccount
) -> None:
    name = f"cli-{os.urandom(4).hex()}"
    web_gateway.cli("accounts", "create", name)
    command = [*MESHGATE, "accounts", "set-password", name]
    result = subprocess.run(
        command, env=web_gateway.env, cwd=ROOT, input="cli password 1\n", capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "cli password 1" not in result.stdout + result.stderr
    short = subprocess.run(command, env=web_gateway.env, cwd=ROOT, input="short\n", capture_output=True, text=True)
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    page = new_page()
    log_in(page, name, "cli password 1")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    expect(page.get_by_role("link", name=name)).to_be_visible()
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)


def test_duplicate_and_invalid_signups(new_page: Callable[..., Page], admin_user: WebAccount) -> None:
    page = new_page()
    sign_up_form = {"Email": admin_user.email, "Password": "another password"}
    page.goto("/signup")
    for label, value in sign_up_form.items():
        page.get_by_label(label).fill(value)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("alert")).to_contain_text("already exists")
    page.get_by_label("Email").fill(new_email())
    page.get_by_label("Password").fill("short")
    page.evaluate("document.querySelector('#password').removeAttribute('minlength')")  # past the browser's own check
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("alert")).to_contain_text("at least 8 characters")

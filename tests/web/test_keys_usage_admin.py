"""/keys, /usage and /admin in the browser, with the key used from the openai SDK against the same gateway."""

from __future__ import annotations

import re
from collections.abc import Callable

import openai
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import FakeUpstream, LiveGateway
from tests.web.conftest import NO_CLIPBOARD, LoggedIn, WebAccount, log_in, new_email, screenshot, sign_up, wait_for

MODEL = "meta-llama/Llama-3.3-70B-Instruct"


def create_key(page: Page, name: str, models: list[str] | None = None, budget: str | None = None) -> str:
    page.goto("/keys")
    page.get_by_label("Name").fill(name)
    if models or budget:
        page.get_by_text("Limit this key (optional)").click()
        for model in models or []:
            page.get_by_label(model, exact=True).check()
        if budget:
            page.get_by_label("Budget (tokens)").fill(budget)
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-secret").inner_text().strip()
    assert re.fullmatch(r"mg-[a-z2-9]{10}-[A-Za-z0-9_-]{32}", secret), secret
    return secret


def test_without_a_clipboard_the_new_secret_is_selected(logged_in: LoggedIn) -> None:
    page = logged_in.page
    page.add_init_script(NO_CLIPBOARD)
    secret = create_key(page, "plain-http")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("status").filter(has_text="Selected: press Ctrl+C")).to_be_visible()
    assert page.evaluate("window.getSelection().toString().trim()") == secret


def refused(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError:
        return True
    return False


def test_key_created_in_the_browser_works_in_the_sdk_until_revoked(
    logged_in: LoggedIn, web_gateway: LiveGateway
) -> None:
    page = logged_in.page
    secret = create_key(page, "laptop")
    expect(page.get_by_text("it is shown only this once")).to_be_visible()
    screenshot(page, "keys")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("status").filter(has_text="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret

    client = web_gateway.client(secret)
    assert MODEL in {m.id for m in client.models.list()}
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello from the key page"}], max_tokens=8
    )
    assert answer.choices[0].message.content and answer.usage is not None

    page.goto("/keys")
    row = page.locator("#active-keys tr", has_text="laptop")
    expect(row).to_contain_text(secret[: len("mg-") + 10] + "-…")
    assert secret not in page.content()  # the secret is gone for good
    wait_for(lambda: bool(page.reload()) and "never" not in row.inner_text(), what="the last use to show")

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator("#active-keys tr", has_text="laptop")).to_have_count(0)
    expect(page.locator("#revoked-keys tr", has_text="laptop")).to_have_count(1)
    wait_for(lambda: refused(client), timeout=5.0, what="the SDK to get 401")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again"}])


def test_scoped_key_from_the_browser(logged_in: LoggedIn, web_gateway: LiveGateway) -> None:
    page = logged_in.page
    secret = create_key(page, "scoped", models=[MODEL], budget="5,000")
    client = web_gateway.client(secret)
    assert [m.id for m in client.models.list()] == [MODEL] or MODEL in {m.id for m in client.models.list()}
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="Qwen/Qwen2.5-VL-32B-Instruct", messages=[{"role": "user", "content": "x"}]
        )
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert answer.usage is not None
    page.goto("/keys")
    row = page.locator("#active-keys tr", has_text="scoped")
    expect(row).to_contain_text(MODEL)
    expect(row).to_contain_text(f"{answer.usage.total_tokens:,} / 5,000 per day")
    expect(row).to_contain_text("refreshes")


def test_usage_page_shows_today_and_the_chart(logged_in: LoggedIn, web_gateway: LiveGateway) -> None:
    page = logged_in.page
    secret = create_key(page, "usage-key")
    client = web_gateway.client(secret)
    total = 0
    for words in ("one", "two three"):
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": words}], max_tokens=6
        )
        assert answer.usage is not None
        total += answer.usage.total_tokens
    page.goto("/usage")
    row = page.locator(f'#today tr[data-model="{MODEL}"][data-bucket="api"]')
    expect(row.locator("[data-used]")).to_have_attribute("data-used", str(total))
    expect(row).to_contain_text("500,000")  # the catalog's api quota for the model
    expect(page.get_by_text("Daily quotas reset at")).to_contain_text("UTC")
    for chart in ("by-bucket", "by-key"):
        expect(page.locator(f"#{chart}[data-drawn='true'] canvas")).to_have_count(1)
    page.get_by_text("Totals").first.click()
    bucket_row = page.locator('#by-bucket ~ details tr[data-series="api"]')
    expect(bucket_row.locator("[data-today]")).to_have_text(f"{total:,}")
    key_row = page.locator("#by-key ~ details tr", has_text="usage-key")
    expect(key_row.locator("[data-today]")).to_have_text(f"{total:,}")
    screenshot(page, "usage")


def test_admin_page_for_admins_only(
    new_page: Callable[..., Page], admin_user: WebAccount, logged_in: LoggedIn, fake_upstream: FakeUpstream
) -> None:
    user_page = logged_in.page
    response = user_page.goto("/admin")
    assert response is not None and response.status == 403
    expect(user_page.get_by_role("heading", name="Forbidden")).to_be_visible()

    admin = new_page()
    log_in(admin, admin_user.email, admin_user.password)
    admin.goto("/admin")
    models = admin.locator(f'tr[data-model="{MODEL}"]')
    expect(models).to_contain_text("up")
    expect(models).to_contain_text(fake_upstream.url)
    for chart in ("platform-by-bucket", "platform-by-model"):
        expect(admin.locator(f"#{chart}[data-drawn='true'] canvas")).to_have_count(1)
    screenshot(admin, "admin")


def test_admin_disables_an_account_and_its_key_is_refused(
    new_page: Callable[..., Page], admin_user: WebAccount, logged_in: LoggedIn, web_gateway: LiveGateway
) -> None:
    user = logged_in
    secret = create_key(user.page, "soon-disabled")
    client = web_gateway.client(secret)
    assert not refused(client)

    admin = new_page()
    log_in(admin, admin_user.email, admin_user.password)
    admin.goto("/admin")
    row = admin.locator(f'tr[data-account="{user.account.email}"]')
    row.get_by_role("button", name=f"Disable {user.account.email}").click()
    expect(admin.locator(f'tr[data-account="{user.account.email}"]')).to_contain_text("disabled")
    wait_for(lambda: refused(client), timeout=5.0, what="the disabled account's key to be refused")
    user.page.goto("/keys")  # its browser session ends too
    assert "/login" in user.page.url
    log_in(user.page, user.account.email, user.account.password)
    expect(user.page.get_by_role("alert")).to_have_text("This account is disabled: ask an admin.")

    admin.locator(f'tr[data-account="{user.account.email}"]').get_by_role(
        "button", name=f"Enable {user.account.email}"
    ).click()
    wait_for(lambda: not refused(client), timeout=5.0, what="the key to work again")


def test_admin_quota_override_applies(
    new_page: Callable[..., Page], admin_user: WebAccount, logged_in: LoggedIn, web_gateway: LiveGateway
) -> None:
    user = logged_in
    secret = create_key(user.page, "quota")
    admin = new_page()
    log_in(admin, admin_user.email, admin_user.password)
    admin.goto("/admin")
    row = admin.locator(f'tr[data-account="{user.account.email}"]')
    row.get_by_label(f"Model for {user.account.email}").select_option(MODEL)
    row.get_by_label(f"Bucket for {user.account.email}").select_option("api")
    row.get_by_label(f"Tokens per day for {user.account.email}").fill("1234")
    row.get_by_role("button", name="Set quota").click()
    expect(admin.locator(f'tr[data-account="{user.account.email}"]')).to_contain_text(f"{MODEL} api: 1,234")
    assert web_gateway.window(secret, MODEL, "api")["limit"] == 1234
    row = admin.locator(f'tr[data-account="{user.account.email}"]')
    row.get_by_label(f"Model for {user.account.email}").select_option(MODEL)
    row.get_by_label(f"Bucket for {user.account.email}").select_option("api")
    row.get_by_role("button", name="Set quota").click()  # empty: back to the catalog's
    wait_for(lambda: web_gateway.window(secret, MODEL, "api")["limit"] == 500_000, what="the default quota")


def test_make_admin(new_page: Callable[..., Page], admin_user: WebAccount, web_gateway: LiveGateway) -> None:
    other = new_page()
    email = new_email("promoted")
    sign_up(other, email)
    expect(other.get_by_role("link", name="Admin")).to_have_count(0)
    admin = new_page()
    log_in(admin, admin_user.email, admin_user.password)
    admin.goto("/admin")
    admin.get_by_role("button", name=f"Make admin {email}").click()
    other.reload()
    expect(other.get_by_role("link", name="Admin")).to_be_visible()
    # An admin cannot lock themselves out.
    expect(admin.locator(f'tr[data-account="{admin_user.email}"]').get_by_role("button")).to_have_text(["Set quota"])

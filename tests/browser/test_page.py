"""The local page in headless Chromium: every workflow of issue 4, with and without JavaScript.

Things are found the way a member (or a screen reader) finds them: by label, role and text.
Waiting is Playwright's auto-waiting and `expect`, never a sleep.
"""
import datetime as dt
import re
import urllib.parse

import pytest
from playwright.sync_api import expect

from node.pages import lan_addresses
from node.service import Service

LIVE_TIMEOUT = 5_000   # ms: "a change appears within a couple of seconds"


def sync_available() -> bool:
    """Joining and syncing need the sync engine (sync/engine.py) or Service.join."""
    try:
        from sync.engine import SyncEngine
    except ImportError:
        return hasattr(Service, "join")
    return hasattr(SyncEngine, "join")


needs_sync = pytest.mark.skipif(not sync_available(), reason="sync (join, /api/sync) is not in this tree yet")


# -- helpers ----------------------------------------------------------------------------------

def open_node(page, node):
    """Open the node's page with the link `crewnode serve` prints; the token leaves the URL at once."""
    page.goto(node.url)
    expect(page).to_have_url(f"{node.base}/")
    return page


def go_home(page):
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Home").click()


def api_congregation(node, name="Riverside", purpose="Neighbours who share tools and meals.") -> str:
    return node.api("POST", "/api/congregations", {"name": name, "purpose": purpose}, expect=201)[1]["id"]


def api_invite(node, cid) -> str:
    return node.api("POST", f"/api/congregations/{cid}/invites", {}, expect=201)[1]["code"]


def api_join(newcomer, inviter, cid) -> None:
    """`newcomer` joins `cid` with a fresh code of `inviter`'s, at its address, and holds it."""
    code = api_invite(inviter, cid)
    newcomer.api("POST", "/api/join", {"code": code, "address": inviter.sync_address}, expect=202)
    newcomer.api("POST", "/api/sync", {"address": inviter.sync_address}, expect=200)
    assert any(c["id"] == cid for c in newcomer.api("GET", "/api/congregations", expect=200)[1])


def api_crew(node, cid, name="Tool library", members=()) -> str:
    return node.api("POST", f"/api/congregations/{cid}/crews",
                    {"name": name, "purpose": "Keep the shed tidy", "members": list(members)}, expect=201)[1]["id"]


def card(page, title):
    """The agreement card with this title."""
    return page.locator("article.agreement").filter(has=page.get_by_role("heading", name=title))


def commitment(page, what):
    return page.locator("li.commitment").filter(has_text=what)


# -- first run ----------------------------------------------------------------------------------

def test_first_run_sets_name_then_creates_a_congregation(node_factory, page):
    node = node_factory.start(name=None)
    open_node(page, node)
    cookie = next(c for c in page.context.cookies() if c["name"] == "crewnode_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    expect(page.get_by_role("heading", name="Welcome to crewnode")).to_be_visible()
    expect(page.get_by_label("Name", exact=True)).to_have_count(0)      # the name comes first
    page.get_by_label("Your name").fill("Ada")
    page.get_by_role("button", name="Save").click()

    expect(page.get_by_role("heading", name="Hello, Ada")).to_be_visible()
    expect(page.get_by_label("Invite code")).to_be_visible()
    expect(page.get_by_role("button", name="Join")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("Riverside")
    page.get_by_label("Purpose").fill("Neighbours who share tools, meals and care.")
    page.get_by_role("button", name="Create congregation").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Riverside")
    expect(page.get_by_text("Neighbours who share tools, meals and care.")).to_be_visible()
    expect(page.locator("#member-list")).to_contain_text("Ada")
    assert node.api("GET", "/api/me", expect=200)[1]["name"] == "Ada"

    go_home(page)
    page.get_by_role("link", name="Riverside").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Riverside")


def test_errors_show_next_to_the_form_and_keep_what_was_typed(node_factory, page):
    node = node_factory.start(name="Ada")
    cid = api_congregation(node)
    open_node(page, node)
    page.get_by_role("link", name="Riverside").click()

    page.get_by_label("Title").fill("   ")                       # passes the browser's check, not the node's
    page.get_by_label("Text").fill("We keep the shed locked after dark.\nThe key hangs by the door.")
    page.get_by_role("button", name="Propose agreement").click()

    form = page.locator("form#propose")
    expect(form.get_by_role("alert")).to_contain_text("title must not be empty")
    expect(page.get_by_label("Text")).to_have_value("We keep the shed locked after dark.\nThe key hangs by the door.")
    assert node.api("GET", f"/api/congregations/{cid}", expect=200)[1]["agreements"] == []

    page.get_by_label("Title").fill("Shed after dark")
    page.get_by_role("button", name="Propose agreement").click()
    expect(card(page, "Shed after dark")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)


# -- congregation and crew ------------------------------------------------------------------------

def test_create_crew_and_propose_and_consent(node_factory, page):
    node = node_factory.start(name="Ada")
    cid = api_congregation(node)
    open_node(page, node)
    page.get_by_role("link", name="Riverside").click()

    page.get_by_label("Title").fill("Quiet hours")
    page.get_by_label("Text").fill("No loud work before nine in the morning.")
    page.get_by_role("button", name="Propose agreement").click()
    agreement = card(page, "Quiet hours")
    expect(agreement).to_contain_text("Open round")
    expect(agreement).to_contain_text("Not answered yet: Ada (you)")
    agreement.get_by_role("button", name="Consent").click()
    agreement = card(page, "Quiet hours")
    expect(agreement).to_contain_text("Agreed")
    expect(agreement).to_contain_text("Your answer: consent")
    assert node.api("GET", f"/api/congregations/{cid}", expect=200)[1]["agreements"][0]["status"] == "agreed"

    page.get_by_label("Crew name").fill("Tool library")
    page.get_by_label("Crew purpose").fill("Keep the shed tidy and the tools sharp.")
    page.get_by_role("button", name="Create crew").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Tool library")
    expect(page.locator("#members")).to_contain_text("Ada (you)")

    page.get_by_role("link", name="Riverside").click()
    crews = page.locator("#crews")
    expect(crews.get_by_role("link", name="Tool library")).to_be_visible()
    expect(crews).to_contain_text("1 member")
    go_home(page)
    expect(page.get_by_role("link", name="Tool library")).to_be_visible()


def test_objecting_needs_a_reason_and_shows_it(node_factory, page):
    node = node_factory.start(name="Ada")
    cid = api_congregation(node)
    crew = api_crew(node, cid)
    open_node(page, node)
    page.get_by_role("link", name="Tool library").click()

    page.get_by_label("Title").fill("Shed key")
    page.get_by_label("Text").fill("The key hangs by the door.")
    page.get_by_role("button", name="Propose agreement").click()

    agreement = card(page, "Shed key")
    agreement.get_by_role("button", name="Object").click()
    agreement = card(page, "Shed key")
    expect(agreement.get_by_role("alert")).to_contain_text("an objection needs a reason")
    expect(agreement).to_contain_text("Open round")

    agreement.get_by_label("Reason").fill("Anyone walking past can take it; let's use a key box.")
    agreement.get_by_role("button", name="Object").click()
    agreement = card(page, "Shed key")
    expect(agreement).to_contain_text("Objection raised")
    expect(agreement).to_contain_text("Ada (you) objects: Anyone walking past can take it; let's use a key box.")
    status = node.api("GET", f"/api/crews/{crew}", expect=200)[1]["agreements"][0]["status"]
    assert status == "objected"

    agreement.get_by_text("Change your answer").click()
    agreement.get_by_role("button", name="Stand aside").click()
    expect(card(page, "Shed key")).to_contain_text("Agreed")


def test_make_and_complete_commitments(node_factory, page):
    node = node_factory.start(name="Ada")
    cid = api_congregation(node)
    crew = api_crew(node, cid)
    open_node(page, node)
    page.get_by_role("link", name="Tool library").click()

    page.get_by_label("What").fill("Oil the saws")
    page.get_by_label("Due").fill("2020-01-01")
    page.get_by_role("button", name="Make commitment").click()
    saws = commitment(page, "Oil the saws")
    expect(saws).to_contain_text("Ada (you)")
    expect(saws).to_contain_text("Overdue")
    expect(saws).to_have_class(re.compile(r"\boverdue\b"))

    page.get_by_label("What").fill("Sort the screws")
    page.get_by_role("button", name="Make commitment").click()
    expect(commitment(page, "Sort the screws")).to_contain_text("no due date")

    go_home(page)
    due = page.locator("section.due")
    expect(due.locator("li.overdue")).to_contain_text("Oil the saws")
    due.get_by_role("link", name="Oil the saws").click()

    commitment(page, "Oil the saws").get_by_role("button", name="Mark done").click()
    commitment(page, "Sort the screws").get_by_role("button", name="Release").click()
    expect(page.locator("#commitments-heading")).to_contain_text("0 open")
    page.get_by_text("Done and released").click()
    expect(commitment(page, "Oil the saws")).to_contain_text("Done")
    expect(commitment(page, "Sort the screws")).to_contain_text("Released")
    statuses = {c["what"]: c["status"] for c in node.api("GET", f"/api/crews/{crew}", expect=200)[1]["commitments"]}
    assert statuses == {"Oil the saws": "done", "Sort the screws": "released"}


def test_invite_shows_code_qr_and_expiry_and_history_names_authors(node_factory, page):
    node = node_factory.start(name="Ada")
    cid = api_congregation(node)
    open_node(page, node)
    page.get_by_role("link", name="Riverside").click()
    page.get_by_label("Who is it for? (optional)").fill("Bea from number 12")
    expect(page.get_by_label("Valid for")).to_have_value("7")
    page.get_by_label("Valid for").select_option(label="1 day")
    page.get_by_role("button", name="Create invite").click()

    invite = page.locator("#invite")
    expect(invite.locator(".code")).to_have_text(re.compile(r"^[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}$"))
    expect(invite.get_by_role("img", name=re.compile("QR code"))).to_be_visible()
    expect(invite).to_contain_text("valid until")
    expect(invite).to_contain_text("Bea from number 12")
    until = dt.datetime.fromisoformat(invite.locator("time").get_attribute("datetime").replace("Z", "+00:00"))
    left = until - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=23, minutes=55) < left <= dt.timedelta(days=1)
    # and the address to give when the newcomer's node does not find this one by itself: the one
    # its sync listener is on (the tests' nodes listen on loopback only, not on the LAN's)
    expect(invite).to_contain_text(node.sync_address)
    for ip in lan_addresses():
        expect(invite).not_to_contain_text(f"{ip}:{node.sync_port}")
    # the congregation lists the codes still open, without the codes
    still_open = page.get_by_role("list", name="Codes still open")
    expect(still_open.get_by_role("listitem")).to_have_count(1)
    expect(still_open).to_contain_text("for Bea from number 12 · by you · good until")
    assert invite.locator(".code").inner_text() not in still_open.inner_text()
    # a code read aloud to the wrong room can be withdrawn
    page.get_by_role("button", name="Create invite").click()
    expect(still_open.get_by_role("listitem")).to_have_count(2)
    still_open.get_by_role("button", name="Withdraw the code for Bea from number 12").click()
    expect(still_open.get_by_role("listitem")).to_have_count(1)
    expect(still_open).to_contain_text("no note · by you")
    assert [i["note"] for i in node.api("GET", f"/api/congregations/{cid}", expect=200)[1]["open_invites"]] == [""]

    page.get_by_role("link", name="History").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("History of Riverside")
    expect(page.locator("ol.history")).to_contain_text("Ada withdrew an invite for Bea from number 12")
    expect(page.locator("ol.history")).to_contain_text("Ada created an invite for Bea from number 12")
    expect(page.locator("ol.history")).to_contain_text("Ada created the congregation “Riverside”")


def test_a_long_purpose_does_not_push_the_congregation_below_the_fold(node_factory, page):
    node = node_factory.start(name="Ada")
    cid = api_congregation(node, purpose="We share tools and meals. " * 760)     # about 20,000 characters
    open_node(page, node)
    page.goto(f"{node.base}/c/{cid}")
    expect(page.locator(".page-head .purpose")).to_contain_text("We share tools and meals.")
    crews = page.get_by_role("heading", name=re.compile("^Crews"))
    assert crews.bounding_box()["y"] < page.viewport_size["height"], "the crews start below the first screen"


def test_settings_renames_me(node_factory, page):
    node = node_factory.start(name="Ada")
    api_congregation(node)
    open_node(page, node)
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_label("Your name")).to_have_value("Ada")
    page.get_by_label("Your name").fill("Ada Lovelace")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Your name is saved")
    assert node.api("GET", "/api/me", expect=200)[1]["name"] == "Ada Lovelace"


def test_peers_page_lists_peers_and_offers_sync_now(node_factory, page):
    node = node_factory.start(name="Ada")
    open_node(page, node)
    page.get_by_role("link", name="Peers").click()
    expect(page.get_by_role("heading", name="Peers", level=1)).to_be_visible()
    expect(page.get_by_label("Address")).to_be_visible()
    expect(page.get_by_role("button", name="Sync now")).to_be_visible()
    if sync_available():
        page.get_by_label("Address").fill("not-an-address")
        page.get_by_role("button", name="Sync now").click()
        expect(page.locator("form#sync").get_by_role("alert")).to_contain_text("host:port")
        expect(page.get_by_label("Address")).to_have_value("not-an-address")

        # A node that reached this one is listed without an address it never gave; syncing
        # with it by address then records one.
        bea = node_factory.start(name="Bea")
        cid = api_congregation(node)
        code = api_invite(node, cid)
        bea.api("POST", "/api/join", {"code": code, "address": node.sync_address}, expect=202)
        page.reload()
        bea_row = page.locator("ul.peers li").filter(has_text="Bea")
        expect(bea_row).to_contain_text("their node reached this one")
        page.get_by_label("Address").fill(bea.sync_address)
        page.get_by_role("button", name="Sync now").click()
        expect(bea_row).to_contain_text(f"{bea.sync_address} · added by address")
    else:
        expect(page.get_by_text("sync not available yet")).to_be_visible()


# -- without JavaScript ----------------------------------------------------------------------------

def test_every_form_works_with_javascript_off(node_factory, browser):
    node = node_factory.start(name=None)
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        open_node(page, node)
        page.get_by_label("Your name").fill("Ada")
        page.get_by_role("button", name="Save").click()
        page.get_by_label("Name", exact=True).fill("Riverside")
        page.get_by_role("button", name="Create congregation").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Riverside")

        page.get_by_role("button", name="Create invite").click()
        expect(page.locator("#invite .code")).to_be_visible()
        expect(page.locator("#invite svg.qr")).to_be_visible()        # drawn by the node, no script

        page.get_by_label("Title").fill("Quiet hours")
        page.get_by_role("button", name="Propose agreement").click()
        agreement = card(page, "Quiet hours")
        agreement.get_by_role("button", name="Object").click()
        expect(card(page, "Quiet hours").get_by_role("alert")).to_contain_text("an objection needs a reason")
        card(page, "Quiet hours").get_by_role("button", name="Consent").click()
        expect(card(page, "Quiet hours")).to_contain_text("Agreed")

        page.get_by_label("Crew name").fill("Tool library")
        page.get_by_role("button", name="Create crew").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Tool library")
        page.get_by_label("What").fill("Oil the saws")
        page.get_by_label("Due").fill("2031-05-01")
        page.get_by_role("button", name="Make commitment").click()
        commitment(page, "Oil the saws").get_by_role("button", name="Mark done").click()
        expect(page.locator("#commitments-heading")).to_contain_text("0 open")

        page.get_by_role("link", name="Settings").click()
        page.get_by_label("Your name").fill("Ada L")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status")).to_contain_text("Your name is saved")
        expect(page.locator("#live-status")).to_be_hidden()             # the live part is a bonus
    finally:
        context.close()


def test_forms_refuse_cross_site_posts(node_factory, page):
    node = node_factory.start(name="Ada")
    open_node(page, node)
    # same browser session (cookie), but not a form of this page: no form token
    answer = page.request.post(f"{node.base}/congregations", form={"name": "Forged"})
    assert answer.status == 403
    answer = page.request.post(f"{node.base}/congregations", form={"name": "Forged"},
                               headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert answer.status == 403
    assert node.api("GET", "/api/congregations", expect=200)[1] == []


# -- live -------------------------------------------------------------------------------------------

def test_a_change_made_through_the_api_appears_without_reload(node_factory, page):
    node = node_factory.start(name="Ada")
    cid = api_congregation(node)
    open_node(page, node)
    page.get_by_role("link", name="Riverside").click()
    expect(page.locator("#live-status")).to_have_text("Live")
    page.evaluate("window.__sameDocument = true")
    title = page.get_by_label("Title")
    title.fill("Half-typed tit")
    title.focus()

    node.api("POST", f"/api/congregations/{cid}/agreements",
             {"title": "Shared meals on Fridays", "text": "Whoever cooks does not wash up."}, expect=201)
    node.api("POST", f"/api/congregations/{cid}/crews", {"name": "Kitchen crew", "members": []}, expect=201)

    expect(card(page, "Shared meals on Fridays")).to_be_visible(timeout=LIVE_TIMEOUT)
    expect(page.locator("#crews").get_by_role("link", name="Kitchen crew")).to_be_visible(timeout=LIVE_TIMEOUT)
    assert page.evaluate("window.__sameDocument") is True            # no reload happened
    expect(page.get_by_label("Title")).to_have_value("Half-typed tit")
    expect(page.get_by_label("Title")).to_be_focused()


def test_the_page_requests_nothing_outside_the_node(node_factory, page):
    node = node_factory.start(name="Ada")
    cid = api_congregation(node)
    crew = api_crew(node, cid)
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    open_node(page, node)
    page.get_by_role("link", name="Riverside").click()
    page.get_by_role("button", name="Create invite").click()
    expect(page.locator("#invite svg.qr")).to_be_visible()
    page.get_by_label("Title").fill("Quiet hours")
    page.get_by_role("button", name="Propose agreement").click()
    card(page, "Quiet hours").get_by_role("link", name="Quiet hours").click()
    expect(page.get_by_role("heading", name="Quiet hours")).to_be_visible()
    for path in (f"/crews/{crew}", f"/c/{cid}/history", f"/crews/{crew}/history", "/peers", "/settings", "/"):
        page.goto(node.base + path)
        expect(page.locator("main")).to_be_visible()
    assert requested
    outside = [u for u in requested if urllib.parse.urlsplit(u).hostname != "127.0.0.1"
               and not u.startswith(("data:", "about:"))]
    assert outside == [], f"the page requested {outside}"


# -- two nodes (need sync) ------------------------------------------------------------------------------

@needs_sync
def test_join_with_an_invite_code_on_a_second_node(node_factory, browser):
    ada = node_factory.start(name="Ada")
    bea = node_factory.start(name="Bea")
    cid = api_congregation(ada)
    ada_page = browser.new_context().new_page()
    bea_page = browser.new_context().new_page()
    try:
        open_node(ada_page, ada)
        ada_page.get_by_role("link", name="Riverside").click()
        ada_page.get_by_role("button", name="Create invite").click()
        code = ada_page.locator("#invite .code").inner_text()
        expect(ada_page.get_by_role("list", name="Codes still open")).to_contain_text("no note · by you")

        open_node(bea_page, bea)
        bea_page.get_by_label("Invite code").fill(code.lower().replace("-", " "))   # as typed by a person
        bea_page.get_by_label("Their node’s address (optional)").fill(ada.sync_address)
        bea_page.get_by_role("button", name="Join").click()
        # joined at once (redirected to the congregation), or pending until the node syncs (home updates live)
        expect(bea_page.get_by_role("link", name="Riverside").or_(
            bea_page.get_by_role("heading", name="Riverside", level=1))).to_be_visible(timeout=15_000)
        if bea_page.get_by_role("heading", name="Riverside", level=1).count() == 0:
            bea_page.get_by_role("link", name="Riverside").click()
        expect(bea_page.locator("#member-list")).to_contain_text("Ada")
        expect(bea_page.locator("#member-list")).to_contain_text("Bea")

        # Ada's open page shows the newcomer without a reload, and the code as no longer open
        expect(ada_page.locator("#member-list")).to_contain_text("Bea", timeout=LIVE_TIMEOUT)
        expect(ada_page.get_by_role("list", name="Codes still open")).to_have_count(0)
        assert cid in {c["id"] for c in bea.api("GET", "/api/congregations", expect=200)[1]}

        # and Ada can now put Bea in a crew with the checkboxes
        ada_page.get_by_label("Crew name").fill("Tool library")
        ada_page.locator("form#new-crew").get_by_label("Bea", exact=True).check()
        ada_page.get_by_role("button", name="Create crew").click()
        expect(ada_page.locator("#members")).to_contain_text("Bea")
    finally:
        ada_page.context.close()
        bea_page.context.close()


@needs_sync
def test_a_join_that_waits_says_why_and_can_be_retried_or_dropped(node_factory, page):
    ada = node_factory.start(name="Ada")
    bea = node_factory.start(name="Bea")
    cid = api_congregation(ada)
    code = api_invite(ada, cid)
    open_node(page, bea)
    joining = page.get_by_role("region", name="Joining")

    def join_at(address, invite=code):
        page.get_by_label("Invite code").fill(invite)
        page.get_by_label("Their node’s address (optional)").fill(address)
        page.get_by_role("button", name="Join").click()

    # The page's port instead of the sync port: the mistake a person is most likely to make.
    join_at(f"127.0.0.1:{ada.port}")
    expect(joining).to_contain_text(f"for the node at 127.0.0.1:{ada.port}")
    expect(joining).to_contain_text("not a crewnode sync port")
    # Joining again with the same code at the right address replaces the waiting join.
    join_at(ada.sync_address)
    expect(page.get_by_role("heading", name="Riverside", level=1)).to_be_visible(timeout=15_000)
    go_home(page)
    expect(page.get_by_role("link", name="Riverside")).to_be_visible()
    expect(joining).to_have_count(0)

    # A join nobody can take yet can be dropped.
    join_at("127.0.0.1:9", invite="ABCD-EFGH-JKMN")
    expect(joining).to_contain_text("nothing answers at that port")
    joining.get_by_role("button", name="Stop trying").click()
    expect(joining).to_have_count(0)
    assert bea.api("GET", "/api/joins", expect=200)[1] == []


@needs_sync
def test_a_change_from_a_second_node_appears_without_reload(node_factory, page):
    ada = node_factory.start(name="Ada")
    bea = node_factory.start(name="Bea")
    cid = api_congregation(ada)
    api_join(bea, ada, cid)

    open_node(page, ada)
    page.get_by_role("link", name="Riverside").click()
    expect(page.locator("#live-status")).to_have_text("Live")
    page.evaluate("window.__sameDocument = true")

    bea.api("POST", f"/api/congregations/{cid}/agreements", {"title": "Bring a dish", "text": "Any dish."}, expect=201)
    bea.api("POST", "/api/sync", {"address": ada.sync_address}, expect=200)

    agreement = card(page, "Bring a dish")
    expect(agreement).to_be_visible(timeout=LIVE_TIMEOUT)
    expect(agreement).to_contain_text("proposed by Bea")
    assert page.evaluate("window.__sameDocument") is True


@needs_sync
def test_a_new_version_from_the_page_asks_a_member_who_came_since(node_factory, browser):
    ada = node_factory.start(name="Ada")
    bea = node_factory.start(name="Bea")
    cid = api_congregation(ada)
    aid = ada.api("POST", f"/api/congregations/{cid}/agreements",
                  {"title": "Quiet hours", "text": "No music after ten."}, expect=201)[1]["id"]
    api_join(bea, ada, cid)
    ada_page = browser.new_context().new_page()
    bea_page = browser.new_context().new_page()
    try:
        # Bea came after the round began: her page says why it does not ask her
        open_node(bea_page, bea)
        bea_page.goto(f"{bea.base}/agreements/{aid}")
        expect(bea_page.locator("#live-status")).to_have_text("Live")
        bea_card = card(bea_page, "Quiet hours")
        expect(bea_card).to_contain_text("This round began before you were a member")
        expect(bea_card.get_by_role("button", name="Consent")).to_have_count(0)

        # Ada proposes a new version from the page: the same text again is refused
        open_node(ada_page, ada)
        ada_page.goto(f"{ada.base}/agreements/{aid}")
        ada_page.get_by_text("Propose a new version").click()
        expect(ada_page.get_by_label("Text")).to_have_value("No music after ten.")
        ada_page.get_by_role("button", name="Propose this version").click()
        expect(ada_page.get_by_role("alert")).to_contain_text("nothing changed")
        ada_page.get_by_label("Text").fill("No music after eleven, Fridays midnight.")
        ada_page.get_by_role("button", name="Propose this version").click()
        ada_card = card(ada_page, "Quiet hours")
        expect(ada_card).to_contain_text("No music after eleven, Fridays midnight.")
        expect(ada_card).to_contain_text("version 2, by you")
        expect(ada_card).to_contain_text("Open round")

        # ... which reaches Bea's open page, and asks her too
        bea.api("POST", "/api/sync", {"address": ada.sync_address}, expect=200)
        expect(bea_card.get_by_role("button", name="Consent")).to_be_visible(timeout=LIVE_TIMEOUT)
        expect(bea_card).to_contain_text("version 2, by Ada")
        bea_card.get_by_role("button", name="Consent").click()
        expect(card(bea_page, "Quiet hours")).to_contain_text("Open round")     # Ada has not answered yet
    finally:
        ada_page.context.close()
        bea_page.context.close()


def test_retiring_an_agreement_is_proposed_and_agreed_like_any_other(node_factory, page):
    node = node_factory.start(name="Ada")
    cid = api_congregation(node)
    aid = node.api("POST", f"/api/congregations/{cid}/agreements", {"title": "Bins on Tuesday"}, expect=201)[1]["id"]
    node.api("POST", f"/api/agreements/{aid}/responses", {"response": "consent"}, expect=200)
    open_node(page, node)
    page.goto(f"{node.base}/agreements/{aid}")
    expect(card(page, "Bins on Tuesday")).to_contain_text("Agreed")

    page.get_by_role("button", name="Propose to retire").click()
    agreement = card(page, "Bins on Tuesday")
    expect(agreement).to_contain_text("Proposed: retire this agreement.")
    expect(agreement).to_contain_text("Agreed")                   # in force until the retiring is agreed
    expect(page.get_by_role("button", name="Propose to retire")).to_have_count(0)
    agreement.get_by_role("button", name="Consent").click()
    expect(card(page, "Bins on Tuesday")).to_contain_text("Retired")
    assert node.api("GET", f"/api/agreements/{aid}", expect=200)[1]["status"] == "retired"


def test_phone_width_never_scrolls_sideways(node_factory, browser):
    node = node_factory.start(name="Ada")
    long_word = "Supercalifragilistic" * 7
    cid = api_congregation(node, name="The Riverside and Canal Street Commons " + long_word,
                           purpose="A purpose that goes on. " * 40)
    crew = api_crew(node, cid, name="Tool library " + long_word)
    for scope in (f"/api/congregations/{cid}/agreements", f"/api/crews/{crew}/agreements"):
        node.api("POST", scope, {"title": "Title " + long_word, "text": ("A long line of text. " * 300) + long_word},
                 expect=201)
    node.api("POST", f"/api/crews/{crew}/commitments", {"what": "Do " + long_word, "due": "2020-02-02"}, expect=201)
    context = browser.new_context(viewport={"width": 360, "height": 780})
    try:
        page = context.new_page()
        open_node(page, node)
        for path in ("/", f"/c/{cid}", f"/crews/{crew}", f"/c/{cid}/history", "/peers", "/settings"):
            page.goto(node.base + path)
            expect(page.locator("main")).to_be_visible()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 360, f"{path} is {width} px wide at a 360 px screen"
        page.goto(f"{node.base}/c/{cid}")
        text = page.locator("article.agreement .text").first
        assert text.evaluate("el => el.scrollHeight > el.clientHeight")        # long text scrolls in its box
    finally:
        context.close()

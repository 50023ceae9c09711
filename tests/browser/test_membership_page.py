"""Membership over time on the page (issue 6): leaving, proposing a removal, being removed,
splitting a congregation, lineage, inherited agreements and entries that do not count.

Real nodes (`node_factory`), synced only when a test says so (POST /api/sync with the peer's
sync address). Things are found by label, role and text; waiting is Playwright's, never a sleep.
"""
import re
import shutil

from playwright.sync_api import expect
from nodes import found, me, sync, sync_all

PHONE = {"width": 360, "height": 780}
ACTIONS = ("Propose agreement", "Create invite", "Create crew", "Leave", "Propose removal", "Fork congregation",
           "Consent", "Object", "Stand aside", "Make commitment")


# -- helpers ----------------------------------------------------------------------------------

def open_node(page, node):
    page.goto(node.url)
    expect(page).to_have_url(f"{node.base}/")
    return page


def crew(node, cid, name, members=()) -> str:
    return node.api("POST", f"/api/congregations/{cid}/crews", {"name": name, "members": list(members)},
                    expect=201)[1]["id"]


def join(newcomer, inviter, cid) -> None:
    code = inviter.api("POST", f"/api/congregations/{cid}/invites", {}, expect=201)[1]["code"]
    newcomer.api("POST", "/api/join", {"code": code, "address": inviter.sync_address}, expect=202)
    if cid not in {c["id"] for c in newcomer.api("GET", "/api/congregations", expect=200)[1]}:
        sync(newcomer, inviter)


def founded_with(node_factory, *names) -> tuple:
    """Nodes for `names`, the first founding Riverside and the others joining it; then its id."""
    founder, *others = (node_factory.start(name=n) for n in names)
    cid = found(founder)
    for other in others:
        join(other, founder, cid)
    return (founder, *others, cid)


def status_of(node, path) -> str:
    return node.api("GET", path, expect=200)[1]["my_status"]


def card(page, title):
    return page.locator("article.agreement").filter(has=page.get_by_role("heading", name=title))


def expect_no_actions(page):
    for name in ACTIONS:
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)


def expect_fits_a_phone(page, what):
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{what} is {width} px wide at a {PHONE['width']} px screen"


# -- leaving ------------------------------------------------------------------------------------

def test_leave_a_crew_then_the_congregation(node_factory, browser):
    ada = node_factory.start(name="Ada")
    cid = found(ada)
    tools = crew(ada, cid, "Tool library")
    kitchen = crew(ada, cid, "Kitchen")

    context = browser.new_context()
    try:
        page = open_node(context.new_page(), ada)
        page.goto(f"{ada.base}/crews/{tools}")
        page.get_by_text("Leave this crew").click()
        form = page.locator("form#leave")
        expect(form).to_contain_text("You stay in the congregation")
        confirm = form.get_by_label("I want to leave")
        # Not ticked: the browser asks first, and nothing is sent.
        form.get_by_role("button", name="Leave", exact=True).click()
        assert confirm.evaluate("el => el.validity.valueMissing")
        assert status_of(ada, f"/api/crews/{tools}") == "active"
        # Were the browser not to ask, the node does, next to the form.
        confirm.evaluate("el => { el.required = false; }")
        form.get_by_role("button", name="Leave", exact=True).click()
        expect(page.locator("form#leave").get_by_role("alert")).to_contain_text("tick “I want to leave”")
        assert status_of(ada, f"/api/crews/{tools}") == "active"

        page.locator("form#leave").get_by_label("I want to leave").check()
        page.locator("form#leave").get_by_role("button", name="Leave", exact=True).click()
        expect(page.locator("#my-status")).to_contain_text("You left this crew on")
        expect(page.locator("#my-status")).to_contain_text("ask a crew member to add you again")
        expect_no_actions(page)
        assert status_of(ada, f"/api/crews/{tools}") == "left"
        assert status_of(ada, f"/api/congregations/{cid}") == "active"
    finally:
        context.close()

    context = browser.new_context(java_script_enabled=False)
    try:
        page = open_node(context.new_page(), ada)
        page.get_by_role("link", name="Riverside").click()
        page.get_by_text("Leave this congregation").click()
        form = page.locator("form#leave")
        expect(form).to_contain_text("What you wrote here stays, with your name on it.")
        expect(form).to_contain_text("You also leave your crews in this congregation.")
        expect(form).to_contain_text("You can come back with a new invite")
        form.get_by_label("I want to leave").check()
        form.get_by_role("button", name="Leave", exact=True).click()

        expect(page.get_by_role("heading", level=1)).to_have_text("Riverside")
        banner = page.locator("#my-status")
        expect(banner).to_contain_text(re.compile(r"You left this congregation on .*\d{4}"))
        expect(banner).to_contain_text("ask a member for a new invite")
        expect_no_actions(page)
        expect(page.locator("#member-list")).to_contain_text("Left")
        assert status_of(ada, f"/api/congregations/{cid}") == "left"

        # The crews in it were left too; reading stays possible.
        page.goto(f"{ada.base}/crews/{kitchen}")
        expect(page.locator("#my-status")).to_contain_text("You left this crew on")
        expect_no_actions(page)
        assert status_of(ada, f"/api/crews/{kitchen}") == "left"
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Home").click()
        expect(page.locator(".congregation-card")).to_contain_text("you left")
    finally:
        context.close()


# -- removal by consent -------------------------------------------------------------------------

def test_propose_a_removal_then_the_removed_member_sees_it(node_factory, browser):
    ada, bo, cy, cid = founded_with(node_factory, "Ada", "Bo", "Cy")
    money = crew(ada, cid, "Money", [me(bo), me(cy)])
    sync_all(ada, bo, cy)
    cy_id = me(cy)

    ada_page = open_node(browser.new_context().new_page(), ada)
    cy_page = open_node(browser.new_context().new_page(), cy)
    try:
        # In a crew: the same form, among the crew's members.
        ada_page.goto(f"{ada.base}/crews/{money}")
        ada_page.get_by_text("Propose removing a member").click()
        form = ada_page.locator("form#removal")
        expect(form).to_contain_text("Only a crew member adding them again can bring them back")
        form.get_by_label("Member").select_option(label="Bo")
        form.get_by_label("Reason").fill("Took from the pool.")
        form.get_by_role("button", name="Propose removal").click()
        in_crew = card(ada_page, "Remove Bo")
        expect(in_crew.locator(".badge-removal")).to_be_visible()
        expect(in_crew.locator(".waiting")).to_have_text("Not answered yet: Ada (you), Cy")
        assert ada.api("GET", f"/api/crews/{money}", expect=200)[1]["agreements"][0]["subject"] == me(bo)

        ada_page.goto(ada.base)
        ada_page.get_by_role("link", name="Riverside").click()
        ada_page.get_by_text("Propose removing a member").click()
        form = ada_page.locator("form#removal")
        expect(form).to_contain_text("the person concerned does not take part")
        expect(form).to_contain_text("What they wrote before stays")
        expect(form).to_contain_text("Only a new invite can bring them back")
        options = form.get_by_label("Member").locator("option")
        expect(options).to_have_text(["Choose a member…", "Bo", "Cy"])      # active members, not me
        form.get_by_label("Member").select_option(label="Cy")
        form.get_by_label("Reason").fill("   ")                             # passes the browser, not the node
        form.get_by_role("button", name="Propose removal").click()

        form = ada_page.locator("form#removal")
        expect(form.get_by_role("alert")).to_contain_text("a removal needs a reason")
        expect(form.get_by_label("Member")).to_have_value(cy_id)           # the choice is kept
        assert ada.api("GET", f"/api/congregations/{cid}", expect=200)[1]["agreements"] == []

        form.get_by_label("Reason").fill("Kept the shared money for himself.")
        form.get_by_role("button", name="Propose removal").click()
        removal = card(ada_page, "Remove Cy")
        expect(removal).to_be_visible()
        expect(removal.locator(".badge-removal")).to_have_text("Removal")
        expect(removal).to_contain_text("Removal proposal")
        expect(removal).to_contain_text("Kept the shared money for himself.")
        expect(removal.locator(".removal-note")).to_contain_text("About Cy, who does not take part in this round")
        expect(removal.locator(".waiting")).to_have_text("Not answered yet: Ada (you), Bo")
        agreement = ada.api("GET", f"/api/congregations/{cid}", expect=200)[1]["agreements"][0]
        assert agreement["kind"] == "removal" and cy_id not in agreement["entitled"]
        removal.get_by_role("button", name="Consent").click()
        expect(card(ada_page, "Remove Cy")).to_contain_text("Your answer: consent")

        # Cy sees the proposal about them, and cannot answer it.
        sync(cy, ada)
        cy_page.get_by_role("link", name="Riverside").click()
        about_cy = card(cy_page, "Remove Cy")
        expect(about_cy).to_contain_text("This proposal is about you.")
        expect(about_cy.get_by_role("button", name="Consent")).to_have_count(0)

        # In a partition Cy writes on, while Bo consents and Ada's node carries out the removal.
        cy.api("POST", f"/api/congregations/{cid}/agreements", {"title": "Cy's late idea"}, expect=201)
        sync(bo, ada)
        bo.api("POST", f"/api/agreements/{agreement['id']}/responses", {"response": "consent"}, expect=200)
        sync(bo, ada)
        sync_all(ada, bo, cy)

        # Cy's own page says so, calmly, and offers nothing to do here any more.
        cy_page.reload()
        banner = cy_page.locator("#my-status")
        expect(banner).to_contain_text(re.compile(r"You were removed from this congregation on .*\d{4}"))
        expect(banner.get_by_role("link", name="Remove Cy")).to_be_visible()
        expect(banner).to_contain_text("Only a new invite from a member can bring you back.")
        expect_no_actions(cy_page)
        expect(card(cy_page, "Remove Cy")).to_contain_text("Agreed")        # reading stays possible
        assert status_of(cy, f"/api/congregations/{cid}") == "removed"

        # The others see the removal, and Cy's entry written after it as one that does not count.
        ada_page.reload()
        expect(ada_page.locator("#member-list")).to_contain_text("Removed")
        expect(card(ada_page, "Remove Cy").locator(".removal-note")).to_contain_text("Agreed: Cy is removed")
        expect(card(ada_page, "Cy's late idea")).to_have_count(0)
        section = ada_page.get_by_role("region", name="Entries that do not count")
        expect(section).to_contain_text("Cy proposed “Cy's late idea”")
        expect(section).to_contain_text("written after its author was removed")
        # ... and so does the history, next to the entry
        ada_page.goto(f"{ada.base}/c/{cid}/history")
        late = ada_page.locator("ol.history li", has_text="Cy's late idea")
        expect(late).to_contain_text("does not count (written after its author was removed)")
        expect(ada_page.locator("ol.history li", has_text="Ada created the congregation")).not_to_contain_text("does not count")
        ada_page.goto(f"{ada.base}/c/{cid}")

        ada_page.set_viewport_size(PHONE)
        expect_fits_a_phone(ada_page, "the congregation page with a removal")
        cy_page.set_viewport_size(PHONE)
        expect_fits_a_phone(cy_page, "the removed member's congregation page")
        cy_page.locator("#my-status").get_by_role("link", name="Remove Cy").click()
        expect(cy_page.get_by_role("heading", name="Remove Cy")).to_be_visible()
        expect(cy_page.locator(".removal-note")).to_contain_text("This proposal was about you. The others agreed to it")
        expect(cy_page.get_by_text("Kept the shared money for himself.")).to_be_visible()
        expect_no_actions(cy_page)

        # Cy is still in the Money crew until the crew removes them, but its records no longer
        # reach Cy: a crew's members are congregation members.
        ada.api("POST", f"/api/crews/{money}/commitments", {"what": "Count the pool"}, expect=201)
        sync_all(ada, bo, cy)
        assert [c["what"] for c in bo.api("GET", f"/api/crews/{money}", expect=200)[1]["commitments"]] == ["Count the pool"]
        assert cy.api("GET", f"/api/crews/{money}", expect=200)[1]["commitments"] == []
        ada_page.goto(f"{ada.base}/crews/{money}")
        expect(ada_page.locator("#members li", has_text="Cy")).to_contain_text("Removed from the congregation")
        expect(ada_page.locator("#gone-note")).to_contain_text("Cy is no longer in Riverside, so this crew's records no longer reach them.")
        expect(ada_page.locator("#gone-note")).to_contain_text("until it removes them: propose it below")
        cy_page.goto(f"{cy.base}/crews/{money}")
        expect(cy_page.locator("#gone-note")).to_contain_text("Cy (you) is no longer in Riverside, so this crew's records no longer reach you.")
    finally:
        ada_page.context.close()
        cy_page.context.close()


# -- splitting -----------------------------------------------------------------------------------------

def test_fork_a_congregation_and_follow_the_lineage_both_ways(node_factory, browser):
    ada, bo = node_factory.start(name="Ada"), node_factory.start(name="Bo")
    cid = found(ada)
    join(bo, ada, cid)
    sync_all(ada, bo)
    crew(ada, cid, "Kitchen", [me(bo)])
    crew(ada, cid, "Garden")
    ada.api("POST", f"/api/congregations/{cid}/agreements",
            {"title": "Quiet after ten", "text": "No loud work after ten in the evening."}, expect=201)

    context = browser.new_context(java_script_enabled=False)
    try:
        page = open_node(context.new_page(), ada)
        page.get_by_role("heading", name="Riverside").get_by_role("link").click()
        page.get_by_text("Split this congregation", exact=True).click()
        form = page.locator("form#fork")
        expect(form).to_contain_text("Members you do not choose never receive the new congregation")
        expect(form).to_contain_text("Both congregations keep their history")
        expect(form).to_contain_text("Those who go stay members here too")
        form.get_by_label("Kitchen").check()
        form.get_by_label("Bo", exact=True).check()
        form.get_by_label("New congregation name").fill("  ")
        form.get_by_label("Its purpose (optional)").fill("Tools and meals by the little river")
        form.get_by_label("I want to split this congregation").check()
        form.get_by_role("button", name="Fork congregation").click()

        form = page.locator("form#fork")
        expect(form.get_by_role("alert")).to_contain_text("name must not be empty")
        expect(form.get_by_label("Kitchen")).to_be_checked()                 # nothing chosen is lost
        expect(form.get_by_label("Bo", exact=True)).to_be_checked()
        expect(form.get_by_label("Garden")).not_to_be_checked()
        expect(form.get_by_label("Its purpose (optional)")).to_have_value("Tools and meals by the little river")
        form.get_by_label("New congregation name").fill(" riverside ")          # the parent's own name
        form.get_by_label("I want to split this congregation").check()
        form.get_by_role("button", name="Fork congregation").click()
        form = page.locator("form#fork")
        expect(form.get_by_role("alert")).to_contain_text("a name of its own")
        # The browser insists on the box; the node does too, for a form posted without it.
        csrf = form.locator("input[name=csrf]").get_attribute("value")
        unticked = page.request.post(f"{ada.base}/c/{cid}/fork", form={"csrf": csrf, "fork_name": "Far River"})
        assert unticked.status == 400 and "I want to split this congregation" in unticked.text()
        assert len(ada.api("GET", "/api/congregations", expect=200)[1]) == 1
        form.get_by_label("New congregation name").fill("Little River")
        form.get_by_label("I want to split this congregation").check()
        form.get_by_role("button", name="Fork congregation").click()

        # Redirected to the new congregation, linked to its parent, with what it inherited.
        expect(page.get_by_role("heading", level=1)).to_have_text("Little River")
        expect(page.locator(".purpose")).to_have_text("Tools and meals by the little river")
        expect(page.locator(".lineage")).to_have_text("Forked from Riverside")
        expect(page.locator("#crews").get_by_role("link", name="Kitchen")).to_be_visible()
        expect(page.locator("#crews").get_by_role("link", name="Garden")).to_have_count(0)
        expect(page.locator("#member-list")).to_contain_text("Bo")
        inherited = page.get_by_role("region", name=re.compile("^Inherited from Riverside"))
        expect(inherited).to_contain_text("Quiet after ten")
        expect(inherited).to_contain_text("No loud work after ten in the evening.")
        expect(inherited.get_by_role("button")).to_have_count(0)               # read-only
        expect(inherited).to_contain_text("at the split: Open round")

        page.locator(".lineage").get_by_role("link", name="Riverside").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Riverside")
        expect(page.locator(".lineage")).to_have_text("Split into Little River")
        expect(page.locator("#crews").get_by_role("link", name="Kitchen")).to_have_count(0)
        page.locator(".lineage").get_by_role("link", name="Little River").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Little River")
        child = page.url.rsplit("/", 1)[1]
    finally:
        context.close()

    # Bo, named, receives the new congregation and sees where it came from, and that he is
    # still a member of Riverside until he leaves it.
    sync(bo, ada)
    listed = {c["id"]: c for c in bo.api("GET", "/api/congregations", expect=200)[1]}
    assert listed[child]["forked_from"] == cid and listed[child]["name"] == "Little River"
    context = browser.new_context(viewport=PHONE)
    try:
        page = open_node(context.new_page(), bo)
        page.get_by_role("link", name="Little River").click()
        expect(page.locator(".lineage").get_by_role("link", name="Riverside")).to_be_visible()
        expect_fits_a_phone(page, "a forked congregation's page")
        page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name="Home").click()
        expect(page.locator(".congregation-card").filter(has_text="Little River")).to_contain_text("split off from Riverside")
        page.locator(".congregation-card").get_by_role("link", name="Riverside", exact=True).click()
        expect(page.locator("#went-note")).to_contain_text("You went to Little River when it split off")
        expect(page.locator("#member-list")).to_contain_text("Bo (you) · went to Little River")
        page.get_by_role("link", name="History").click()
        expect(page.locator("ol.history")).to_contain_text("Ada split off the congregation “Little River”, with Ada, Bo and 1 crew")
        kitchen = bo.api("GET", f"/api/congregations/{child}", expect=200)[1]["crews"][0]["id"]
        page.goto(f"{bo.base}/crews/{kitchen}/history")
        expect(page.get_by_role("navigation", name="Breadcrumb")).to_have_text("Home › Little River › Kitchen › History")
        expect(page.locator("ol.history")).to_contain_text("Ada moved the crew to “Little River”")
        rule = bo.api("POST", f"/api/crews/{kitchen}/agreements", {"title": "Wash up together"}, expect=201)[1]
        page.goto(f"{bo.base}/agreements/{rule['id']}")
        expect(page.get_by_role("navigation", name="Breadcrumb")).to_have_text("Home › Little River › Kitchen › Agreement")
    finally:
        context.close()


def test_someone_a_split_cut_off_from_a_crew_is_told_and_named(node_factory, browser):
    """Cy adds Bea to Garden before hearing that Ada's split took it to Garden Club."""
    ada, bea, cy, cid = founded_with(node_factory, "Ada", "Bea", "Cy")
    garden = crew(ada, cid, "Garden", [me(cy)])
    sync_all(ada, bea, cy)
    ada.api("POST", f"/api/congregations/{cid}/fork", {"name": "Garden Club", "crews": [garden], "members": [me(cy)]},
            expect=201)
    cy.api("POST", f"/api/crews/{garden}/members", {"member_id": me(bea)}, expect=200)
    rota = cy.api("POST", f"/api/crews/{garden}/agreements", {"title": "Watering rota"}, expect=201)[1]["id"]
    sync(bea, cy)
    sync_all(ada, bea, cy)

    context = browser.new_context()
    try:
        page = open_node(context.new_page(), bea)
        page.goto(f"{bea.base}/crews/{garden}")
        expect(page.locator("#moved-note")).to_contain_text("This crew went to Garden Club when it split off")
        expect(page.get_by_role("button", name="Make commitment")).to_have_count(0)
        expect(page.get_by_text("Leave this crew")).to_be_visible()
        page.goto(f"{bea.base}/agreements/{rota}")
        expect(page.locator("#moved-note")).to_contain_text("your answers would reach no one")
        expect(page.get_by_role("button", name="Consent")).to_have_count(0)
        page.goto(f"{bea.base}/c/{cid}")
        expect(page.locator("#crews")).to_contain_text("went to Garden Club, which you are not in")
        page.goto(f"{bea.base}/crews/{garden}")
        page.get_by_text("Leave this crew").click()
        page.get_by_label("I want to leave").check()
        page.get_by_role("button", name="Leave", exact=True).click()
        expect(page.locator("#my-status")).to_contain_text("It went to Garden Club, which you are not in.")
        expect(page.locator("#my-status")).not_to_contain_text("add you again")

        page = open_node(context.new_page(), ada)
        page.goto(f"{ada.base}/crews/{garden}")
        expect(page.locator("#members")).to_contain_text("Bea Not in the congregation")
        expect(page.locator("#commit-by option")).to_have_text(["Ada (you)", "Cy"])
        page.goto(f"{ada.base}/agreements/{rota}")
        expect(page.locator("body")).not_to_contain_text(re.compile(r"member [a-z2-7]{8}"))
        expect(page.locator("body")).to_contain_text("Not answered yet: Ada (you), Bea, Cy")
    finally:
        context.close()


# -- forked logs ----------------------------------------------------------------------------------------

def test_a_forked_device_log_shows_both_entries_as_evidence(node_factory, page):
    ada, bo = node_factory.start(name="Ada"), node_factory.start(name="Bo")
    cid = found(ada)
    join(bo, ada, cid)
    sync_all(ada, bo)
    # Bo's home folder is copied while his node is stopped; both copies write with one device key.
    bo.stop()
    shutil.copytree(bo.home, bo.home.parent / "bo-copy")
    bo.restart()
    twin = node_factory.start(home=bo.home.parent / "bo-copy", name=None)
    bo.api("POST", f"/api/congregations/{cid}/agreements", {"title": "Paint the shed green"}, expect=201)
    twin.api("POST", f"/api/congregations/{cid}/agreements", {"title": "Paint the shed red"}, expect=201)
    sync(bo, ada)
    sync(twin, ada)

    open_node(page, ada)
    page.goto(f"{ada.base}/c/{cid}")
    section = page.get_by_role("region", name="Entries that do not count")
    expect(section.get_by_role("heading", name="Forked device logs")).to_be_visible()
    fork = section.locator("li").filter(has_text="A device of Bo wrote 2 different entries")
    expect(fork.locator(".evidence li")).to_have_count(2)
    expect(fork.locator(".evidence li").first).to_contain_text("Kept")
    expect(fork.locator(".evidence li").nth(1)).to_contain_text("Dropped")
    expect(fork).to_contain_text("a proposal")
    kept = ada.api("GET", f"/api/congregations/{cid}", expect=200)[1]
    assert len(kept["forks"]) == 1 and len({a["title"] for a in kept["agreements"]}) == 1

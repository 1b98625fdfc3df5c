"""The web app in a real browser: Debian's Chromium driven by Playwright over real HTTP, a
hub process and three node-agent processes on 127.0.0.1 (the 30,000-patient synthetic
hospitals, so the comparative analysis releases hazard ratios).

One lab serves the whole module; the tests run in the order a study lives: each role signs
in, a researcher submits the study from the builder, the lead and the operator approve it
on its page, a steward sees the task waiting at their node and approves it there, the
researcher watches it complete and reads its charts, an auditor verifies its bundle, and a
researcher of another project is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests import federation as fed
from tests import governance as g
from tests import webapp

from medlab.cli.main import main
from medlab.federation import launch
from medlab.federation.hub import vocabulary
from medlab.federation.hub.service import init_hub
from medlab.federation.node.inbox import Inbox
from medlab.ledger.parties import canonical

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():  # `make test` installs it (scripts/chromium.sh) and requires it
    if os.environ.get("MEDLAB_BROWSER") == "required":
        raise RuntimeError(f"{CHROMIUM} is missing: run scripts/chromium.sh")
    pytest.skip(f"{CHROMIUM} not installed (scripts/chromium.sh)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

LONG = 240_000  # ms: a federated study of 30,000 patients over HTTP on a busy machine


class Booted:
    """The hub's first operator, made before the hub process starts (one writer of its log
    at a time), handed to the lab builder."""

    def __init__(self, token: str) -> None:
        self.token = token

    def bootstrap(self, name: str) -> str:
        return self.token


class Lab:
    def __init__(self, root: Path, synth_study: Path) -> None:
        self.root = root
        self.stores = fed.copy_sites(synth_study, root / "nodes")
        for store in self.stores[:2]:
            fed.federation_policy(store, approval="none", require_agreement=True)
        fed.federation_policy(self.stores[2], approval="each_task", require_agreement=True)
        hub = init_hub(root / "hub")
        token = hub.bootstrap("olga")
        vocabulary.load(hub.sessions, [webapp.VOCABULARY])
        self.port = launch.free_port()
        self.url = f"http://{launch.LOOPBACK}:{self.port}"
        self.processes = [launch.start_hub(root / "hub", self.port, root / "hub.log")]
        self.http = httpx.Client(base_url=self.url, timeout=60)
        self.lab = g.build(Booted(token), self.http, self.stores, analyses=webapp.ANALYSES)  # type: ignore[arg-type]
        for store in self.stores:
            self.processes.append(
                launch.start_agent(store, self.url, root / f"{store.stem}.log", wait=1.0)
            )
        self.study_id: str | None = None

    def stop(self) -> None:
        self.http.close()
        for process in reversed(self.processes):
            launch.stop(process)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, synth_study: Path) -> Iterator[Lab]:
    built = Lab(tmp_path_factory.mktemp("browser"), synth_study)
    try:
        yield built
    finally:
        built.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        found = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield found
        finally:
            found.close()


def signed_in(browser: Browser, lab: Lab, user: str, width: int = 1280) -> Page:
    """A new browser context of ``user``, signed in through the sign-in form."""
    context = browser.new_context(
        base_url=lab.url, viewport={"width": width, "height": 800}, accept_downloads=True
    )
    page = context.new_page()
    page.goto("/signin")
    page.get_by_label("Your access token").fill(lab.lab.tokens[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    return page


def test_each_role_signs_in_to_its_workspace(browser: Browser, lab: Lab) -> None:
    homes = {
        "olga": ("/operator", "Operations"),
        "rita": ("/projects", "Projects"),
        "steward-hospital_c": ("/steward", "Nodes"),
        "aude": ("/audit", "Transparency log"),
    }
    for user, (home, heading) in homes.items():
        page = signed_in(browser, lab, user)
        assert page.url == lab.url + home, (user, page.url)
        expect(page.get_by_role("heading", level=1)).to_have_text(heading)
        expect(page.locator(".who")).to_contain_text(f"Signed in as {user}")
        page.context.close()
    page = browser.new_page(base_url=lab.url)
    page.goto("/signin")
    page.get_by_label("Your access token").fill("not a token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown, expired or revoked")
    page.close()


def test_a_researcher_submits_the_study_and_it_waits_for_two_approvals(
    browser: Browser, lab: Lab
) -> None:
    page = signed_in(browser, lab, "alan")
    page.goto("/build")
    page.get_by_label("Study spec", exact=True).fill(json.dumps(webapp.spec("browser study")))
    page.get_by_label("Fewest sites that must answer").fill("3")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"/studies/st_[0-9a-f]+$"))
    lab.study_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#study-state")).to_have_attribute("data-state", "submitted")
    expect(page.locator("#approve")).to_have_count(0)  # never the submitter's
    for user in ("rita", "olga"):
        approver = signed_in(browser, lab, user)
        approver.goto(f"/studies/{lab.study_id}")
        approver.locator("#approve").click()
        expect(approver.locator("#approve")).to_have_count(0)
        approver.context.close()
    # The page refreshes itself while the study is submitted or running.
    expect(page.locator("#study-state")).to_have_attribute("data-state", "running", timeout=30_000)
    page.context.close()


def test_the_steward_sees_the_waiting_task_and_approves_it_at_the_node(
    browser: Browser, lab: Lab
) -> None:
    assert lab.study_id is not None
    page = signed_in(browser, lab, "steward-hospital_c")
    page.goto("/steward/hospital_c")
    task = page.locator("section.task")
    for _ in range(60):  # the agent reports the task and its store within a few seconds
        if task.count() and str(lab.stores[2]) in task.inner_text():
            break
        page.wait_for_timeout(1000)
        page.reload()
    expect(task).to_have_count(1)
    expect(task).to_contain_text("browser study")
    expect(task).to_contain_text("releases attrition counts, per adjustment HR with CI")
    command = task.locator("pre.command code").nth(0).inner_text()
    (waiting,) = [t for t in Inbox(lab.stores[2]).all() if t.state == "awaiting_approval"]
    assert command == (
        f"medlab node approve {lab.stores[2]} {waiting.task_id} --by steward-hospital_c"
    )
    expect(page.locator("#dq-categories")).to_be_visible()
    expect(page.locator("#policy-words")).to_contain_text("the steward approves each task")
    # The steward runs the command the page shows, at the node.
    assert main(command.split()[1:]) == 0
    page.context.close()


def _chart(page: Page, chart_id: str) -> dict[str, Any]:
    """The data and layout Plotly drew into ``chart_id`` (as the browser holds them)."""
    page.locator(f"#{chart_id}[data-rendered=true]").wait_for()
    found: dict[str, Any] = page.evaluate(
        "id => { const el = document.getElementById(id);"
        " return {data: JSON.parse(JSON.stringify(el.data)), title: el.layout.title.text,"
        " traces: el.querySelectorAll('.scatterlayer .trace').length}; }",
        chart_id,
    )
    return found


def test_the_researcher_watches_it_complete_and_reads_km_and_forest(
    browser: Browser, lab: Lab
) -> None:
    assert lab.study_id is not None
    page = signed_in(browser, lab, "alan")
    page.goto(f"/studies/{lab.study_id}")
    if page.locator("#study-state").get_attribute("data-state") != "completed":
        expect(page.locator("p.live")).to_be_visible()  # the page refreshes itself
    expect(page.locator("#study-state")).to_have_attribute("data-state", "completed", timeout=LONG)
    results = json.loads(
        lab.http.get(
            f"/api/v1/studies/{lab.study_id}/files/results.json",
            headers={"authorization": f"Bearer {lab.lab.tokens['alan']}"},
        ).content
    )
    (comparative,) = [a for a in results["analyses"] if a["type"] == "comparative"]
    key = f"a{results['analyses'].index(comparative)}"
    adjustment = comparative["estimates"][0]["adjustment"]
    # The forest plot: one marker per site with a released HR, at that HR, then the
    # random-effects estimate; each interval between its released bounds.
    forest = _chart(page, f"{key}-forest")
    intervals, markers = forest["data"]
    sites = [
        (s["site"], e)
        for s in comparative["per_site"]
        for e in s["estimates"]
        if e["adjustment"] == adjustment and e.get("hr") is not None
    ]
    assert len(sites) >= 2
    assert markers["y"][: len(sites)] == [name for name, _ in sites]
    assert markers["x"][: len(sites)] == [e["hr"] for _, e in sites]
    random = comparative["meta_analysis"][adjustment]["random"]
    assert markers["x"][len(sites)] == random["hr"]
    assert intervals["x"][:2] == [sites[0][1]["ci_low"], sites[0][1]["ci_high"]]
    assert forest["traces"] == 2  # both drawn
    # The KM curves of the first site: each arm's survival at the released grid days.
    first = comparative["per_site"][0]
    km = _chart(page, f"{key}-km-0")
    rows = first["km"][adjustment]
    for trace, arm in zip(km["data"], ("target", "comparator"), strict=True):
        points = [r for r in rows if r["arm"] == arm]
        assert trace["x"] == [p["day"] for p in points]
        assert trace["y"] == [p["survival"] for p in points]
    assert any(v is not None and v < 1 for v in km["data"][0]["y"])
    # The numbers at risk under it are the released ones.
    table = page.locator(f'table.at-risk[data-chart="{key}-km-0"]')
    shown = table.locator("tbody tr").nth(0).locator("td").all_inner_texts()
    expected = [p["at_risk"] for p in rows if p["arm"] == "target"]
    at_risk = [None if s == "–" else int(s.replace(",", "")) for s in shown]
    assert at_risk == expected[: len(shown)] and len(shown) > 3
    # Each covariate's balance: per site, |SMD| before against after the adjustment, for
    # every covariate whose both values were released.
    scatter = _chart(page, f"{key}-covariates")
    for trace, per_site in zip(scatter["data"], comparative["per_site"], strict=True):
        rows = [
            r
            for r in per_site["covariate_balance"]
            if r["smd_before"] is not None and r["smd_after"][adjustment] is not None
        ]
        assert trace["name"] == per_site["site"]
        assert trace["x"] == [abs(r["smd_before"]) for r in rows]
        assert trace["y"] == [abs(r["smd_after"][adjustment]) for r in rows]
        assert trace["meta"]["covariates"] == [r["covariate"] for r in rows]
    assert sum(len(t["x"]) for t in scatter["data"]) > 10
    page.context.close()


def _bundle(browser: Browser, lab: Lab, out: Path) -> Path:
    page = signed_in(browser, lab, "alan")
    page.goto(f"/studies/{lab.study_id}")
    with page.expect_download() as download:
        page.get_by_role("link", name="Evidence bundle").click()
    path = out / "bundle.zip"
    download.value.save_as(path)
    page.context.close()
    return path


def _tampered(bundle: Path, out: Path) -> Path:
    """The bundle with one hazard ratio changed and the manifest made to match, as a forger
    would."""
    with zipfile.ZipFile(bundle) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    results = json.loads(files["results.json"])
    (comparative,) = [a for a in results["analyses"] if a["type"] == "comparative"]
    estimate = next(e for s in comparative["per_site"] for e in s["estimates"] if e.get("hr"))
    estimate["hr"] = round(estimate["hr"] * 0.5, 3)
    files["results.json"] = json.dumps(results).encode()
    manifest = json.loads(files["manifest.json"])
    manifest["results.json"] = "sha256:" + hashlib.sha256(files["results.json"]).hexdigest()
    files["manifest.json"] = canonical(manifest)
    target = out / "tampered.zip"
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return target


def test_an_auditor_verifies_a_good_bundle_and_catches_a_tampered_one(
    browser: Browser, lab: Lab, tmp_path: Path
) -> None:
    assert lab.study_id is not None
    good = _bundle(browser, lab, tmp_path)
    page = signed_in(browser, lab, "aude")
    page.goto("/verify")
    page.get_by_label("Evidence bundle (zip)").set_input_files(good)
    page.get_by_role("button", name="Verify").click()
    expect(page.locator("#verdict")).to_have_attribute("data-ok", "true")
    checks = page.locator("ul.checks li")
    assert checks.count() > 10
    expect(page.locator('ul.checks li[data-ok="false"]')).to_have_count(0)
    page.get_by_label("Evidence bundle (zip)").set_input_files(_tampered(good, tmp_path))
    page.get_by_role("button", name="Verify").click()
    expect(page.locator("#verdict")).to_have_attribute("data-ok", "false")
    failed = page.locator('ul.checks li[data-ok="false"] .check-name').all_inner_texts()
    assert failed == ["result hash: results.json is the result the hub signed"]
    # The evidence chain of the study, step by step.
    page.goto(f"/studies/{lab.study_id}/evidence")
    for store in lab.stores:
        expect(page.locator("main")).to_contain_text(store.stem)
    page.context.close()


def _approve_at_node(lab: Lab, store: Path, done: set[str]) -> None:
    """The node's steward approves its waiting task (not one approved before)."""
    for _ in range(120):
        waiting = [
            t
            for t in Inbox(store).all()
            if t.state == "awaiting_approval" and t.task_id not in done
        ]
        if waiting:
            assert main(["node", "approve", str(store), waiting[0].task_id]) == 0
            done.add(waiting[0].task_id)
            return
        time.sleep(0.5)
    raise AssertionError("no task waited at the node")


def test_a_cohort_built_by_concept_search_shows_its_attrition_after_a_run(
    browser: Browser, lab: Lab
) -> None:
    page = signed_in(browser, lab, "alan")
    page.goto("/build/cohort")
    page.get_by_label("Cohort name").fill("warfarin AF")
    page.get_by_label("Name, code or concept id").fill("warfarin")
    page.get_by_role("button", name="Search").click()
    row = page.locator('#concepts tr[data-concept="1310149"]')
    expect(row).to_contain_text("Warfarin")
    page.get_by_label("New set's name").fill("warfarin")
    row.get_by_role("button", name="Add").click()
    expect(page.locator('table.concept-set[data-set="0"]')).to_contain_text("Warfarin")
    page.get_by_label("Name, code or concept id").fill("atrial fibrillation")
    page.get_by_role("button", name="Search").click()
    page.get_by_label("New set's name").fill("AF")
    page.locator('#concepts tr[data-concept="313217"]').get_by_role("button", name="Add").click()
    page.locator("#entry_domain").select_option("drug_exposure")
    page.locator("#entry_set").select_option("0")
    page.get_by_role("button", name="Set the entry event").click()
    page.get_by_label("Rule name").fill("AF in the 30 days up to entry")
    page.locator("#rule_domain").select_option("condition_occurrence")
    page.locator("#rule_set").select_option("1")
    page.get_by_label("From days before entry (blank: any time)").fill("30")
    page.get_by_role("button", name="Add the rule").click()
    expect(page.locator("#words")).to_contain_text(
        "inclusion rule 1 (AF in the 30 days up to entry)"
    )
    expect(page.locator("#words")).to_contain_text("Warfarin")
    page.get_by_role("button", name="Make a feasibility study of it").click()
    page.get_by_label("Fewest sites that must answer").fill("3")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"/studies/st_[0-9a-f]+$"))
    study_id = page.url.rsplit("/", 1)[1]
    for user in ("rita", "olga"):
        lab.lab[user].approve(study_id)
    _approve_at_node(lab, lab.stores[2], set())
    expect(page.locator("#study-state")).to_have_attribute("data-state", "completed", timeout=LONG)
    results = lab.lab["alan"].study(study_id).results()
    (feasibility,) = results["analyses"]
    rows = page.locator("section.analysis table").nth(0).locator("tbody tr")
    shown = [r.locator("td").all_inner_texts() for r in rows.all()]
    expected = [
        [f["criterion"], "–" if f["persons"] is None else f"{f['persons']:,}"]
        for f in feasibility["funnel"]
    ]
    assert [s[:2] for s in shown] == expected
    assert any(f["criterion"] == "AF in the 30 days up to entry" for f in feasibility["funnel"])
    funnel = _chart(page, "a0-funnel")
    assert funnel["data"][0]["y"] == [f["criterion"] for f in feasibility["funnel"]]
    assert funnel["data"][0]["x"] == [f["persons"] for f in feasibility["funnel"]]
    page.context.close()


def test_a_researcher_of_another_project_gets_403_pages(browser: Browser, lab: Lab) -> None:
    assert lab.study_id is not None
    page = signed_in(browser, lab, "carl")
    for path in (f"/studies/{lab.study_id}", "/projects/apixaban-safety", "/audit"):
        answer = page.goto(path)
        assert answer is not None and answer.status == 403, path
        expect(page.get_by_role("heading", level=1)).to_have_text(re.compile("Refused"))
        expect(page.locator("main")).not_to_contain_text("browser study")
    page.goto("/studies")
    expect(page.locator("main")).not_to_contain_text("browser study")
    page.context.close()


def test_the_pages_work_on_a_tablet_and_in_chinese(browser: Browser, lab: Lab) -> None:
    assert lab.study_id is not None
    page = signed_in(browser, lab, "alan", width=768)
    page.goto(f"/studies/{lab.study_id}?lang=zh")
    expect(page.locator("html")).to_have_attribute("lang", "zh-Hans")
    expect(page.get_by_role("heading", level=2, name="审批")).to_be_visible()
    wide = page.evaluate("document.documentElement.scrollWidth")
    assert wide <= 768 + 1  # nothing wider than the screen
    page.keyboard.press("Tab")  # the first stop is the skip link
    assert page.evaluate("document.activeElement.className") == "skip"
    page.context.close()


_UNNAMED = """() => [...document.querySelectorAll(
  'input:not([type=hidden]), select, textarea, button, a[href], [role=img]')]
  .filter(e => e.offsetParent !== null || e.getClientRects().length)
  .filter(e => {
    const labelled = e.labels && e.labels.length;
    const named = (e.getAttribute('aria-label') || e.getAttribute('aria-labelledby')
      || e.getAttribute('title') || (e.textContent || '').trim());
    return !(labelled || named);
  }).map(e => e.outerHTML.slice(0, 120))"""


def test_every_control_of_every_workspace_has_a_name(browser: Browser, lab: Lab) -> None:
    """Each page's form fields, buttons, links and charts carry an accessible name, the page
    has one h1 and its language."""
    assert lab.study_id is not None
    pages = {
        "alan": ["/projects", f"/studies/{lab.study_id}", "/build", "/build/cohort?q=warfarin"],
        "steward-hospital_c": ["/steward", "/steward/hospital_c"],
        "aude": ["/audit", f"/studies/{lab.study_id}/evidence", "/verify"],
        "olga": ["/operator"],
    }
    for user, paths in pages.items():
        page = signed_in(browser, lab, user)
        for path in paths:
            page.goto(path)
            page.wait_for_load_state()
            assert page.evaluate(_UNNAMED) == [], (user, path)
            assert page.locator("h1").count() == 1, path
            assert page.evaluate("document.documentElement.lang") in ("en", "zh-Hans")
        page.context.close()

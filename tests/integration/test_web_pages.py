"""The web app's pages in process (Starlette's transport, no browser): each role's
workspace, refusals as pages, the forms' CSRF guard, and every page of a finished study
held against its results.json. The browser tests (tests/browser) drive the same pages in
Chromium over real HTTP."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests import federation as fed
from tests import governance as g
from tests import webapp

from medlab.federation.hub import profiles, vocabulary
from medlab.federation.hub.app import create_app
from medlab.federation.hub.service import init_hub
from medlab.federation.node import profile
from medlab.federation.node.agent import Agent
from medlab.federation.node.inbox import Inbox
from medlab.governance import audit
from medlab.governance.access import HubError
from medlab.studies.spec import StudySpec
from medlab.web import i18n


class Site:
    """A finished governed study and a waiting one, with the parties that ran them."""

    def __init__(self, root: Path, synth_small: Path) -> None:
        self.stores = fed.copy_sites(synth_small, root / "nodes")
        for store in self.stores[:2]:
            fed.federation_policy(store, approval="none", require_agreement=True)
        fed.federation_policy(self.stores[2], approval="each_task", require_agreement=True)
        self.hub = init_hub(root / "hub")
        self.api = TestClient(create_app(self.hub), base_url="http://hub")
        self.lab = g.build(self.hub, self.api, self.stores, analyses=webapp.ANALYSES)
        vocabulary.load(self.hub.sessions, [webapp.VOCABULARY])
        self.agents = [Agent(store, self.api) for store in self.stores]
        self.study = self.lab["alan"].submit(webapp.spec(), project="apixaban-safety", min_sites=3)
        for user in ("rita", "olga"):
            self.lab[user].approve(self.study.id)
        self.run_agents()
        store = self.stores[2]
        (self.waiting,) = [t for t in Inbox(store).all() if t.state == "awaiting_approval"]
        self.waiting_page: dict[str, str] = {}
        for user in ("steward-hospital_c", "olga"):
            self.waiting_page[user] = self.page(user, "/steward/hospital_c").text
        Inbox(store).move(self.waiting.task_id, "awaiting_approval", approved_by="steward c")
        self.run_agents()
        status = self.study.wait(timeout=30)
        assert status.state == "completed", status.reason
        self.results = self.study.results()

    def run_agents(self) -> None:
        for _ in range(5):
            for agent in self.agents:
                agent.run(once=True)

    def browser(self, user: str | None) -> TestClient:
        """A client with ``user``'s session cookie (None: signed out)."""
        client = TestClient(self.api.app, base_url="http://hub", follow_redirects=False)
        if user is not None:
            answer = client.post("/signin", data={"token": self.lab.tokens[user], "next": "/"})
            assert answer.status_code == 303, answer.text
        return client

    def page(self, user: str | None, path: str) -> Any:
        return self.browser(user).get(path)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, synth_small: Path) -> Iterator[Site]:
    yield Site(tmp_path_factory.mktemp("web"), synth_small)


def test_signing_in_gives_each_role_its_workspace(site: Site) -> None:
    homes = {
        "olga": "/operator",
        "alan": "/projects",
        "steward-hospital_a": "/steward",
        "aude": "/audit",
    }
    for user, home in homes.items():
        client = site.browser(user)
        answer = client.get("/")
        assert answer.status_code == 303 and answer.headers["location"] == home
        page = client.get(home)
        assert page.status_code == 200, (user, page.text[:500])
        assert f"Signed in as {user}" in page.text


def test_the_session_cookie_the_headers_and_the_scripts_stay_on_the_hub(site: Site) -> None:
    """The session cookie is HttpOnly and SameSite=Strict; every page has a strict CSP and
    loads scripts from the hub only (Plotly from its Python package); the browser's language
    picks the page's, and ?lang= is remembered."""
    client = TestClient(site.api.app, base_url="http://hub", follow_redirects=False)
    answer = client.post("/signin", data={"token": site.lab.tokens["alan"], "next": "/"})
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get(f"/studies/{site.study.id}")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    scripts = re.findall(r'<script[^>]* src="([^"]+)"', page.text)
    assert scripts == ["/static/plotly.min.js", "/static/app.js"]
    plotly = client.get("/static/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    assert "://" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', page.text))
    chinese = client.get("/studies", headers={"accept-language": "zh-CN,zh;q=0.9"})
    assert '<html lang="zh-Hans">' in chinese.text
    client.get("/studies?lang=zh")
    assert '<html lang="zh-Hans">' in client.get("/projects").text


def test_a_wrong_token_is_refused_and_no_session_sends_to_sign_in(site: Site) -> None:
    client = site.browser(None)
    answer = client.post("/signin", data={"token": "nope", "next": "/studies"})
    assert answer.status_code == 401 and "unknown, expired or revoked" in answer.text
    assert "medlab_session" not in answer.cookies
    answer = client.get(f"/studies/{site.study.id}")
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/signin?next=%2Fstudies%2F{site.study.id}"
    assert client.post("/signin", data={"token": "x", "next": "//evil.example"}).status_code == 401
    signed = site.browser(None).post(
        "/signin", data={"token": site.lab.tokens["alan"], "next": "//evil.example/x"}
    )
    assert signed.headers["location"] == "/"  # never a redirect to another site


def test_a_researcher_of_another_project_gets_403_pages(site: Site) -> None:
    for path in (
        f"/studies/{site.study.id}",
        f"/studies/{site.study.id}/evidence",
        f"/studies/{site.study.id}/files/results.json",
        f"/studies/{site.study.id}/bundle.zip",
        "/projects/apixaban-safety",
        "/operator",
        "/audit",
        "/steward/hospital_a",
    ):
        page = site.page("carl", path)
        assert page.status_code == 403, (path, page.status_code)
        assert "text/html" in page.headers["content-type"]
        assert "Refused" in page.text and "web apixaban" not in page.text
    listing = site.page("carl", "/studies").text
    assert site.study.id not in listing


def test_a_steward_sees_only_their_nodes(site: Site) -> None:
    page = site.page("steward-hospital_a", "/steward").text
    assert 'data-node="hospital_a"' in page and 'data-node="hospital_b"' not in page
    assert site.page("steward-hospital_a", "/steward/hospital_b").status_code == 403


def test_a_stewards_page_shows_the_waiting_task_with_its_command(site: Site) -> None:
    page = site.waiting_page["steward-hospital_c"]
    task = site.waiting.task_id
    assert f'data-task="{task}"' in page
    store = str(site.stores[2])
    assert f"medlab node approve {store} {task} --by steward-hospital_c" in page
    assert "releases attrition counts, per adjustment HR with CI" in page  # in words
    assert "web apixaban" in page and "alan" in page
    # The operator sees the node's page too, with a placeholder for who approves.
    assert f"medlab node approve {store} {task} --by STEWARD" in site.waiting_page["olga"]


def test_a_pages_own_reloads_are_logged_once_a_minute(site: Site) -> None:
    # A running study's page reloads itself (?live=1, its query kept); an auditor reads one
    # web event per user and page a minute of those, and every other view.
    client = site.browser("alan")
    path = f"/studies/{site.study.id}"

    def views() -> list[dict[str, Any]]:
        return [
            e
            for e in audit.events(site.hub.party.log_dir)
            if e["type"] == "web" and e.get("path") == path and e.get("user") == "alan"
        ]

    before = len(views())
    for _ in range(3):
        assert client.get(f"{path}?adjustment=none&live=1").status_code == 200
    assert len(views()) == before + 1
    assert client.get(path).status_code == 200
    assert len(views()) == before + 2
    # An API call is an event every time, ?live=1 or not.
    api = f"/api/v1/studies/{site.study.id}"
    calls = [e for e in audit.events(site.hub.party.log_dir) if e.get("path") == api]
    headers = {"authorization": f"Bearer {site.lab.tokens['alan']}"}
    for _ in range(2):
        assert site.api.get(f"{api}?live=1", headers=headers).status_code == 200
    again = [e for e in audit.events(site.hub.party.log_dir) if e.get("path") == api]
    assert len(again) == len(calls) + 2


def test_a_running_studys_page_reloads_itself_with_its_query(site: Site) -> None:
    running = site.lab["alan"].submit(webapp.spec("web live"), project="apixaban-safety")
    page = site.page("alan", f"/studies/{running.id}?adjustment=iptw").text
    assert '<meta http-equiv="refresh" content="3; url=?adjustment=iptw&amp;live=1">' in page
    assert "This page refreshes every 3 seconds" in page


def test_a_stewards_page_links_to_the_nodes_console_while_it_runs(site: Site) -> None:
    # A node whose steward runs `medlab node console` reports its loopback address.
    store = site.stores[1]
    assert "local console" not in site.page("steward-hospital_b", "/steward/hospital_b").text
    reported = profile.build(store).model_dump(mode="json")
    profiles.record(
        site.hub.sessions, "hospital_b", reported | {"console": "http://127.0.0.1:8766/"}
    )
    page = site.page("steward-hospital_b", "/steward/hospital_b").text
    assert '<a href="http://127.0.0.1:8766/" rel="noreferrer">' in page
    bad = reported | {"console": "http://evil.example/"}  # never a link off the loopback
    with pytest.raises(HubError, match=r"\$\.console"):
        profiles.record(site.hub.sessions, "hospital_b", bad)
    profiles.record(site.hub.sessions, "hospital_b", reported)


def test_a_stewards_page_shows_quality_policy_budgets_and_log(site: Site) -> None:
    page = site.page("steward-hospital_c", "/steward/hospital_c").text
    assert 'id="dq-categories"' in page
    assert "the steward approves each task" in page  # the policy in words
    assert 'id="budgets-table"' in page and "apixaban-safety" in page
    assert "task_approved" not in page or "task_accepted" in page
    assert 'data-type="task_awaiting_approval"' in page  # the node's own log
    assert "No task waits for you." in page  # the task was approved since


def test_the_operator_sees_organisations_users_tokens_nodes_and_usage(site: Site) -> None:
    page = site.page("olga", "/operator").text
    for name in ("pharma-x", "rita", "hospital_a", "apixaban-safety"):
        assert name in page
    assert site.lab.tokens["rita"] not in page  # a token is never shown again
    usage = site.page("olga", "/operator/usage.csv")
    assert usage.status_code == 200 and "apixaban-safety" in usage.text


def test_revoking_a_token_needs_the_pages_form_token(site: Site) -> None:
    client = site.browser("olga")
    page = client.get("/operator").text
    token_id = re.search(r'/operator/tokens/([^/"]+)/revoke', page)
    assert token_id is not None
    for csrf in ("x", "伪造"):  # any text: refused, never a server error
        answer = client.post(f"/operator/tokens/{token_id.group(1)}/revoke", data={"csrf": csrf})
        assert answer.status_code == 403
    assert f"/operator/tokens/{token_id.group(1)}/revoke" in client.get("/operator").text


def test_the_auditor_sees_the_timeline_and_the_evidence_chain(site: Site) -> None:
    page = site.page("aude", f"/audit?study={site.study.id}").text
    assert 'data-type="study_dispatched"' in page
    chain = site.page("aude", f"/studies/{site.study.id}/evidence").text
    assert site.results["spec_hash"][:16] in chain
    for store in site.stores:
        assert store.stem in chain


def test_the_study_page_shows_every_analysis_with_its_charts(site: Site) -> None:
    page = site.page("alan", f"/studies/{site.study.id}").text
    for name in ("bleeds", "table1", "apixaban_vs_warfarin", "funnel", "anticoagulants"):
        assert name in page
    _, charts = webapp.page_numbers(page)
    kinds = {c["layout"]["title"]["text"].split(": ")[-1] for c in charts}
    assert "Kaplan–Meier curves" in kinds, kinds
    assert any(k.startswith("Covariate balance, ") for k in kinds), kinds  # each covariate's


def test_no_page_of_a_finished_study_shows_a_number_it_did_not_release(site: Site) -> None:
    """Every number in the text of every page about the study, and every number its charts
    draw, is one results.json holds (at the digits shown)."""
    released = webapp.released_numbers(site.results)
    comparative = next(a for a in site.results["analyses"] if a["type"] == "comparative")
    adjustments = [e["adjustment"] for e in comparative["estimates"]]
    paths = [f"/studies/{site.study.id}?adjustment={a}" for a in adjustments]
    paths += [f"/studies/{site.study.id}", f"/studies/{site.study.id}/evidence"]
    paths += ["/projects/apixaban-safety", "/studies"]
    checked = 0
    for user in ("alan", "rita"):
        for lang in i18n.LANGUAGES:
            for path in paths:
                sep = "&" if "?" in path else "?"
                page = site.page(user, f"{path}{sep}lang={lang}")
                assert page.status_code == 200, (path, page.text[:300])
                shown, charts = webapp.page_numbers(page.text)
                assert webapp.unexplained(shown, released) == [], path
                for chart in charts:
                    drawn = [str(v) for v in webapp.chart_numbers(chart)]
                    assert webapp.unexplained(drawn, released) == [], (path, chart["layout"])
                checked += len(shown)
    assert checked > 500  # the pages do show numbers


def test_every_text_the_pages_ask_for_has_its_chinese() -> None:
    pattern = re.compile(r"""_\(\s*(["'])((?:\\.|(?!\1).)*)\1""")
    root = Path(i18n.__file__).parent
    asked = set()
    for path in [*root.rglob("*.html"), *root.rglob("*.py")]:
        asked |= {m.group(2) for m in pattern.finditer(path.read_text())}
    missing = sorted(asked - i18n.chinese().keys())
    assert missing == []
    assert len(asked) > 200


def test_a_page_in_chinese_is_in_chinese(site: Site) -> None:
    page = site.page("alan", f"/studies/{site.study.id}?lang=zh").text
    assert '<html lang="zh-Hans">' in page and "研究" in page
    assert json.dumps(i18n.chinese(), ensure_ascii=False)  # the catalog reads as UTF-8


# -- the study builder --------------------------------------------------------------------


def _builder(site: Site, user: str, **fields: Any) -> Any:
    client = site.browser(user)
    page = client.get("/build")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    files = fields.pop("files", None) or {"spec_file": ("", b"", "application/json")}
    data = {"csrf": csrf.group(1), "project": "apixaban-safety"} | fields
    return client.post("/build", data=data, files=files)


def test_the_builder_checks_a_spec_and_shows_its_cohorts_in_words(site: Site) -> None:
    answer = _builder(site, "alan", spec_text=json.dumps(webapp.spec("checked")))
    assert answer.status_code == 200, answer.text[-2000:]
    assert "The spec is valid" in answer.text
    assert "Cohort 4: warfarin AF new users" in answer.text


def test_the_builder_shows_a_problem_at_its_field_and_submits_nothing(site: Site) -> None:
    before = len(site.hub.studies(site.hub.principal(site.lab.tokens["alan"])))
    bad = webapp.spec("broken")
    bad["analyses"][2]["settings"]["adjustments"] = ["sideways"]
    text = json.dumps(bad, indent=2)
    answer = _builder(site, "alan", spec_text=text, action="submit")
    assert answer.status_code == 422
    error = re.search(
        r'<p id="spec_text-error" class="error" role="alert">([^<]+)</p>', answer.text
    )
    assert error is not None and "$.analyses[2]" in error.group(1)
    assert "(line " in error.group(1)
    assert 'aria-invalid="true"' in answer.text
    assert "sideways" in answer.text  # the text is kept for the researcher to mend
    answer = _builder(site, "alan", spec_text=text.replace('"broken"', '"b"'), min_sites="x")
    assert answer.status_code == 422 and 'id="min_sites-error"' in answer.text
    after = len(site.hub.studies(site.hub.principal(site.lab.tokens["alan"])))
    assert after == before


def test_the_builder_imports_an_atlas_cohort(site: Site, eunomia_dir: Path) -> None:
    circe = eunomia_dir.parent / "eunomia-cohorts" / "CohortGenerator" / "celecoxib.json"
    answer = _builder(
        site,
        "alan",
        spec_text=json.dumps(webapp.spec("with atlas")),
        circe_name="celecoxib",
        files={"circe_file": ("celecoxib.json", circe.read_bytes(), "application/json")},
    )
    assert answer.status_code == 200, answer.text[-2000:]
    assert "Cohort 5: celecoxib" in answer.text
    assert "&#34;name&#34;: &#34;celecoxib&#34;" in answer.text  # now in the spec's text


def test_the_builder_submits_into_the_project(site: Site) -> None:
    answer = _builder(site, "alan", spec_text=json.dumps(webapp.spec("from the page")))
    assert answer.status_code == 200
    answer = _builder(
        site, "alan", spec_text=json.dumps(webapp.spec("from the page")), action="submit"
    )
    assert answer.status_code == 303, answer.text[-2000:]
    study_id = answer.headers["location"].rsplit("/", 1)[1]
    status = site.hub.status(study_id, site.hub.principal(site.lab.tokens["alan"]))
    assert status.state == "submitted" and status.project == "apixaban-safety"
    assert site.page("carl", "/build").status_code == 200  # a researcher without projects
    assert "not a member of any project" in site.page("carl", "/build").text
    assert site.page("aude", "/build").status_code == 403
    # The lead approves from the study page; the submitter never sees the button.
    assert 'id="approve"' not in site.page("alan", f"/studies/{study_id}").text
    lead = site.browser("rita")
    page = lead.get(f"/studies/{study_id}").text
    assert 'id="approve"' in page and "analysis apixaban_vs_warfarin (comparative)" in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    assert lead.post(f"/studies/{study_id}/approve", data={"csrf": "forged"}).status_code == 403
    answer = lead.post(f"/studies/{study_id}/approve", data={"csrf": csrf.group(1)})
    assert answer.status_code == 303
    status = site.hub.status(study_id, site.hub.principal(site.lab.tokens["rita"]))
    assert [a["kind"] for a in status.approvals] == ["lead"]
    assert 'id="approve"' not in lead.get(f"/studies/{study_id}").text
    assert 'id="approve"' in site.page("olga", f"/studies/{study_id}").text


# -- the cohort editor --------------------------------------------------------------------


class Editor:
    """A researcher's session on the cohort editor, carrying its draft from page to page."""

    def __init__(self, site: Site, user: str) -> None:
        self.client = site.browser(user)
        self.page = self.client.get("/build/cohort").text

    def field(self, name: str) -> str:
        found = re.search(rf'name="{name}" value="([^"]*)"', self.page)
        assert found is not None, name
        return html.unescape(found.group(1))

    def act(self, action: str, code: int = 200, **fields: str) -> str:
        data = {"csrf": self.field("csrf"), "draft": self.field("draft"), "action": action}
        answer = self.client.post("/build/cohort", data=data | fields)
        assert answer.status_code == code, answer.text[-3000:]
        self.page = answer.text
        return self.page


def test_a_cohort_is_built_by_concept_search_and_made_a_feasibility_study(site: Site) -> None:
    editor = Editor(site, "alan")
    assert "concepts in the hub&#39;s vocabulary" in editor.page
    found = editor.act("search", q="warfarin")
    assert 'data-concept="1310149"' in found and "Drug" in found
    editor.act("add:1310149", q="warfarin", target="new", set_name="warfarin", descendants="yes")
    editor.act("search", name="warfarin AF", q="313217")  # by concept id
    assert 'data-concept="313217"' in editor.page
    editor.act("add:313217", name="warfarin AF", target="new", set_name="AF", descendants="yes")
    draft = json.loads(editor.field("draft"))
    assert [s["name"] for s in draft["concept_sets"]] == ["warfarin", "AF"]
    assert draft["concept_sets"][0]["items"] == [
        {"concept_id": 1310149, "include_descendants": True, "is_excluded": False}
    ]
    page = editor.act(
        "entry",
        name="warfarin AF",
        entry_domain="drug_exposure",
        entry_set="0",
        first="yes",
        prior_days="365",
    )
    assert "entry: first drug exposure of concept set 0" in page
    # A problem stays at its field and changes nothing.
    before = editor.field("draft")
    page = editor.act(
        "rule",
        422,
        name="warfarin AF",
        rule_domain="condition_occurrence",
        rule_set="1",
        rule_before="many",
    )
    assert 'id="rule-error"' in page and editor.field("draft") == before
    page = editor.act(
        "rule",
        name="warfarin AF",
        rule_name="AF in the 30 days up to entry",
        rule_domain="condition_occurrence",
        rule_set="1",
        rule_before="30",
        rule_after="0",
    )
    assert "inclusion rule 1 (AF in the 30 days up to entry)" in page
    page = editor.act("study", name="warfarin AF")
    assert "Study builder" in page and "feasibility of warfarin AF" in page
    spec = re.search(r'<textarea id="spec_text"[^>]*>([^<]*)</textarea>', page)
    assert spec is not None
    document = json.loads(html.unescape(spec.group(1)))
    assert document["analyses"] == [{"type": "feasibility", "name": "funnel", "cohort": 1}]
    checked = StudySpec.model_validate(document)
    assert checked.cohorts[0].definition is not None
    assert len(checked.cohorts[0].definition.inclusion_rules) == 1


def test_the_cohort_editor_is_for_researchers_and_keeps_a_bad_draft_out(site: Site) -> None:
    assert site.page("aude", "/build/cohort").status_code == 403
    editor = Editor(site, "alan")
    data = {"csrf": editor.field("csrf"), "draft": "{not json", "action": "search", "q": "x"}
    answer = editor.client.post("/build/cohort", data=data)
    assert answer.status_code == 422 and "the draft was unreadable" in answer.text


def test_the_builder_adds_an_analysis_from_its_settings_form(site: Site) -> None:
    spec = webapp.spec("with a form")
    spec["analyses"] = [a for a in spec["analyses"] if a["type"] != "comparative"]
    text = json.dumps(spec)
    page = _builder(
        site, "alan", spec_text=text, action="analysis_type", analysis_type="comparative"
    )
    assert page.status_code == 200
    for field in ("role.target", "setting.population.washout_period", "setting.caliper"):
        assert f'name="{field}"' in page.text
    assert 'value="stratification" checked' in page.text  # the defaults are shown
    form = {
        "analysis_type": "comparative",
        "name": "apixaban_vs_warfarin_2",
        "role.target": "1",
        "role.comparator": "2",
        "role.outcome": "3",
        "setting.population.washout_period": "365",
        "setting.population.remove_subjects_with_prior_outcome": "yes",
        "setting.caliper": "0.1",
        "setting.adjustments": ["none", "matching"],
    }
    # A problem shows at its field, and the spec stays as it was.
    bad = _builder(
        site, "alan", spec_text=text, action="add_analysis", **(form | {"setting.caliper": "wide"})
    )
    assert bad.status_code == 422 and 'id="setting.caliper-error"' in bad.text
    same = _builder(
        site, "alan", spec_text=text, action="add_analysis", **(form | {"role.outcome": "9"})
    )
    assert same.status_code == 422, same.status_code
    assert "refers to cohort 9, not defined" in same.text, re.findall(
        r"class=.error[^>]*>([^<]*)", same.text
    )
    twice = _builder(
        site, "alan", spec_text=text, action="add_analysis", **(form | {"role.comparator": "1"})
    )
    assert twice.status_code == 422 and "the target and the comparator are the same" in twice.text
    added = _builder(site, "alan", spec_text=text, action="add_analysis", **form)
    assert added.status_code == 200, added.text[-2000:]
    assert "The spec is valid" in added.text
    found = re.search(r'<textarea id="spec_text"[^>]*>([^<]*)</textarea>', added.text)
    assert found is not None
    analysis = json.loads(html.unescape(found.group(1)))["analyses"][-1]
    assert analysis == {
        "type": "comparative",
        "name": "apixaban_vs_warfarin_2",
        "target": 1,
        "comparator": 2,
        "outcome": 3,
        "settings": {
            "population": {"washout_period": 365},
            "adjustments": ["none", "matching"],
            "caliper": 0.1,
        },
    }


def test_a_node_profile_carries_no_count_from_the_nodes_log(
    site: Site, eunomia_store: Path
) -> None:
    """A node's log says how many rows each load wrote; the profile leaves such numbers at
    the node and keeps only an entry's place, round, policy number and budget."""
    from medlab.federation.node.profile import log_entries

    allowed = {"index", "round", "version_no", "epsilon", "rho"}

    def numbers(log: list[dict[str, Any]]) -> set[str]:
        return {k for e in log for k, v in e.items() if type(v) in (int, float)}

    for store in (eunomia_store, site.stores[0]):
        found = numbers(log_entries(store))
        assert found - allowed == set() and "index" in found
    loads = [e for e in log_entries(eunomia_store) if e["type"] == "data_loaded"]
    assert loads and all("rows" not in e and "fingerprint" in e for e in loads)
    with site.hub.sessions() as s:
        (row, *_) = profiles.history(s, "hospital_a")
    assert numbers(row.profile["log"]) <= allowed

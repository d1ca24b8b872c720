"""The review app end to end: headless Chromium (Debian's) driven by Playwright, against the
real HAPI server, a discovery run through a real Celery worker, and a real Keycloak for the
SMART launch. The tests run in file order and share one signed-in browser session; the
later ones change the data. Each page's screenshot lands in var/screenshots/review/.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from fhir_match.evaluate.study import load_study
from fhir_match.fhir import FhirClient, Search
from fhir_match.fhir.models import parse_resource, to_json
from fhir_match.writeback import SUBJECT_SYSTEM, subject_identifier
from worker import runs
from worker.process import WorkerProcess

from ..conftest import ROOT
from .conftest import KEYCLOAK_URL
from .populations import AS_OF, STUDY, Population, loaded_population, run_discovery

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
REALM = f"{KEYCLOAK_URL}/realms/fhir-match"
CLIENT_ID = "fhir-match-review"
USER, PASSWORD, FHIR_USER = "coordinator", "coordinator", "Practitioner/coordinator-1"
SHOTS = ROOT / "var" / "screenshots" / "review"
APP_START_S = 60
ACTION_TIMEOUT_MS = 90_000
"""Keycloak's sign-in and HAPI's reads on a loaded 2-core machine can pass Playwright's 30 s."""
PATIENTS, SEED = 40, 11
"""Everyone with an ITP history (itp_share 1.0), so the run's cohort is the whole file."""


@dataclass(frozen=True)
class App:
    url: str
    log: Path


@pytest.fixture(scope="module")
def population(fhir: FhirClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Population]:
    folder = tmp_path_factory.mktemp("review-population")
    with loaded_population(fhir, folder, PATIENTS, SEED, 1.0, "review") as population:
        yield population


@pytest.fixture(scope="module")
def first_run(
    redis_client: redis.Redis, celery_worker: WorkerProcess, population: Population
) -> runs.Run:
    run = run_discovery(redis_client, celery_worker, population)
    assert run.state == "done", run
    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(log: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``fhir-match review`` as a user runs it, on a free port; returns once it listens."""
    port = _free_port()
    env = {**os.environ, "FHIR_MATCH_REVIEW_PORT": str(port), **extra_env}
    command = [str(Path(sys.executable).parent / "fhir-match"), "review"]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + APP_START_S
    while True:
        try:
            if httpx.get(f"{url}/static/app.css", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the review app did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)  # polling for the server to listen, not waiting for an effect


@pytest.fixture(scope="module")
def app(
    population: Population, first_run: runs.Run, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[App]:
    try:
        httpx.get(f"{REALM}/.well-known/openid-configuration", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"no Keycloak realm at {REALM} (scripts/keycloak start): {exc}")
    log = tmp_path_factory.mktemp("review-app") / "app.log"
    process, url = start_app(
        log,
        {
            "FHIR_MATCH_TAG": population.tag,
            "FHIR_MATCH_REVIEW_CLIENT_ID": CLIENT_ID,
            "FHIR_MATCH_REVIEW_AUTH_SERVER": REALM,
        },
    )
    try:
        yield App(url, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM} (scripts/setup installs Debian's chromium)")
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def page(browser: Browser) -> Iterator[Page]:
    """One signed-in coordinator for the whole file."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


def sign_in(page: Page) -> None:
    """Keycloak's login form, as a person fills it in."""
    page.wait_for_url(re.compile(re.escape(REALM)))
    page.get_by_label("Username or email").fill(USER)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()


def unlabelled_controls(page: Page) -> int:
    return int(
        page.evaluate(
            "() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
            ".filter(e => !e.labels || e.labels.length === 0).length"
        )
    )


# -- launch ------------------------------------------------------------------------------


def test_a_standalone_launch_signs_the_coordinator_in(app: App, page: Page) -> None:
    response = page.goto(app.url + "/")
    assert response is not None
    assert response.status == 401
    shot(page, "signin")
    page.get_by_role("link", name="Sign in").click()
    sign_in(page)
    page.wait_for_url(app.url + "/")

    assert page.get_by_role("heading", name="Studies").is_visible()
    assert page.get_by_text("Casey Coordinator").is_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "fhir_match_review")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax"
    assert re.fullmatch(r"[0-9a-f]{32}", cookie["value"])  # an id, nothing readable
    assert page.evaluate("() => localStorage.length + sessionStorage.length") == 0
    shot(page, "studies")


def test_an_expiring_token_is_renewed_with_the_refresh_token(
    app: App, page: Page, redis_client: redis.Redis
) -> None:
    cookie = next(c for c in page.context.cookies() if c["name"] == "fhir_match_review")
    key = f"fhir-match:review:{cookie['value']}"
    session = json.loads(redis_client.get(key) or b"{}")
    old = session["token"]["access_token"]
    session["token"]["expires_at"] = time.time()  # as if the token had run out
    redis_client.set(key, json.dumps(session), keepttl=True)

    response = page.goto(app.url + "/")
    assert response is not None
    assert response.status == 200
    renewed = json.loads(redis_client.get(key) or b"{}")["token"]
    assert renewed["access_token"] != old
    assert renewed["expires_at"] > time.time() + 60


def test_an_ehr_launch_passes_its_launch_and_audience(
    app: App, browser: Browser, fhir: FhirClient
) -> None:
    context = browser.new_context()
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    ehr = context.new_page()
    authorize: list[str] = []
    ehr.on(
        "request",
        lambda r: authorize.append(r.url) if "/protocol/openid-connect/auth" in r.url else None,
    )
    ehr.goto(f"{app.url}/launch?iss={fhir.base_url}&launch=ehr-launch-42")
    sign_in(ehr)
    ehr.wait_for_url(app.url + "/")
    context.close()

    query = parse_qs(urlsplit(authorize[0]).query)
    assert query["launch"] == ["ehr-launch-42"]
    assert query["aud"] == [fhir.base_url]
    assert query["code_challenge_method"] == ["S256"]
    assert "launch" in query["scope"][0].split()
    assert "code_challenge" in query
    assert "state" in query
    assert not [s for s in query["scope"][0].split() if "*" in s]


def test_bad_launches_get_a_clear_page(app: App, browser: Browser) -> None:
    context = browser.new_context()
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    tab = context.new_page()
    foreign = tab.goto(f"{app.url}/launch?iss=https://ehr.invalid/fhir&launch=x")
    assert foreign is not None
    assert foreign.status == 400
    assert (
        tab.get_by_role("alert").inner_text().startswith("This app was launched from a FHIR server")
    )
    forged = tab.goto(f"{app.url}/callback?code=stolen&state=made-up")
    assert forged is not None
    assert forged.status == 400
    assert "Sign-in failed" in tab.get_by_role("alert").inner_text()
    denied = tab.goto(f"{app.url}/callback?error=access_denied&state=x")
    assert denied is not None
    assert denied.status == 400
    assert "Traceback" not in tab.content()
    shot(tab, "bad-launch")
    context.close()


# -- the list and a patient --------------------------------------------------------------


def test_the_list_shows_every_listed_patient_and_filters(
    app: App, page: Page, population: Population
) -> None:
    page.goto(f"{app.url}/studies/kn5501")
    rows = page.locator("table.list tbody tr")
    assert rows.count() == len(population.listed)
    shown = {
        "Patient/"
        + (rows.nth(i).locator("a").get_attribute("href") or "").rsplit("/", 1)[1]: rows.nth(i)
        .locator("td")
        .nth(2)
        .inner_text()
        for i in range(rows.count())
    }
    assert shown == population.listed
    assert unlabelled_controls(page) == 0
    shot(page, "candidates")

    page.get_by_label("Outcome").select_option("potential-candidate")
    page.get_by_label("Sort by").select_option("unknown")
    page.get_by_label("Order").select_option("desc")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"outcome=potential-candidate"))
    potential = sum(1 for o in population.listed.values() if o == "potential-candidate")
    assert rows.count() == potential
    unknowns = [int(rows.nth(i).locator("td").nth(4).inner_text()) for i in range(rows.count())]
    assert unknowns == sorted(unknowns, reverse=True)


def _a_candidate(population: Population) -> str:
    return sorted(p for p, o in population.listed.items() if o == "candidate")[0]


def test_a_patient_page_shows_every_criterion_and_its_evidence(
    app: App, page: Page, population: Population
) -> None:
    patient = _a_candidate(population)
    page.goto(f"{app.url}/studies/kn5501/patients/{patient.split('/')[1]}")
    criteria = page.locator("table.criteria tbody tr")
    expected = population.expected[patient]["criteria"]
    assert criteria.count() == len(expected)
    results = [criteria.nth(i).locator(".result").inner_text() for i in range(criteria.count())]
    assert results == sorted(results, key=lambda r: r != "unknown")  # what needs a human first
    shown = {
        criteria.nth(i).locator("th").inner_text().split()[0]: results[i]
        for i in range(criteria.count())
    }
    assert shown == expected
    platelets = page.locator("table.criteria tr", has_text="inc-3").locator("li")
    assert platelets.count() >= 2
    first = platelets.first.inner_text()
    assert re.search(r"\d+(\.\d+)? \S+", first), first  # a value with its unit
    assert re.search(r"\d{4}-\d{2}-\d{2}", first), first  # and its date
    assert "LOINC" in first
    assert unlabelled_controls(page) == 0
    shot(page, "patient")


# -- decisions ---------------------------------------------------------------------------


def _subject(fhir: FhirClient, patient: str, tag: str) -> dict[str, Any]:
    identifier = subject_identifier(load_study(STUDY), patient, tag)
    search = Search("ResearchSubject").where("identifier", f"{SUBJECT_SYSTEM}|{identifier}")
    return to_json(next(fhir.search(search)))


def test_a_decision_made_with_the_keyboard_is_written_with_provenance(
    app: App, page: Page, population: Population, fhir: FhirClient
) -> None:
    patient = _a_candidate(population)
    page.goto(f"{app.url}/studies/kn5501/patients/{patient.split('/')[1]}")
    eligible = page.get_by_role("radio", name="Eligible", exact=True)
    eligible.focus()
    page.keyboard.press("Space")
    assert eligible.is_checked()
    page.get_by_role("button", name="Save decision").focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")

    assert page.get_by_role("status").inner_text() == "Saved: Eligible."
    assert page.locator("#status").inner_text() == "eligible"
    history = page.locator("table.history tbody tr")
    assert history.count() == 1
    assert "Casey Coordinator" in history.first.inner_text()
    subject = _subject(fhir, patient, population.tag)
    assert subject["status"] == "eligible"
    provenances = [
        to_json(p)
        for p in fhir.search(
            Search("Provenance").where("target", f"ResearchSubject/{subject['id']}")
        )
    ]
    decided = [p for p in provenances if p["agent"][0]["type"]["coding"][0]["code"] == "author"]
    assert len(decided) == 1
    assert decided[0]["agent"][0]["who"]["reference"] == FHIR_USER
    assert population.tag in {t["code"] for t in decided[0]["meta"]["tag"]}
    shot(page, "decision")


def test_a_form_without_its_csrf_token_changes_nothing(
    app: App, page: Page, population: Population, fhir: FhirClient
) -> None:
    patient = _a_candidate(population)
    before = _subject(fhir, patient, population.tag)
    response = page.request.post(
        f"{app.url}/studies/kn5501/patients/{patient.split('/')[1]}/decision",
        form={"decision": "withdrawn", "version": before["meta"]["versionId"]},
    )
    assert response.status == 403
    assert (
        _subject(fhir, patient, population.tag)["meta"]["versionId"] == before["meta"]["versionId"]
    )


def test_ineligible_without_a_reason_is_an_announced_error_and_nothing_is_written(
    app: App, page: Page, population: Population, fhir: FhirClient
) -> None:
    patient = sorted(p for p, o in population.listed.items() if o == "potential-candidate")[0]
    before = _subject(fhir, patient, population.tag)
    page.goto(f"{app.url}/studies/kn5501/patients/{patient.split('/')[1]}")
    page.get_by_role("radio", name="Ineligible", exact=True).check()
    with page.expect_navigation():
        page.get_by_role("button", name="Save decision").click()

    alert = page.get_by_role("alert")
    assert alert.inner_text() == "Not saved: say why the patient is ineligible."
    assert page.get_by_role("status").count() == 0  # not the box a success is shown in
    assert page.get_by_role("radio", name="Ineligible", exact=True).is_checked()
    reason = page.get_by_label("Reason (needed for ineligible)")
    assert reason.get_attribute("aria-invalid") == "true"
    assert reason.get_attribute("aria-describedby") == alert.get_attribute("id")
    assert page.evaluate("() => document.activeElement.id") == "reason"
    after = _subject(fhir, patient, population.tag)
    assert after["meta"]["versionId"] == before["meta"]["versionId"]
    shot(page, "decision-refused")


def test_a_conflict_is_shown_and_never_overwritten(
    app: App, page: Page, population: Population, fhir: FhirClient
) -> None:
    patient = sorted(p for p, o in population.listed.items() if o == "candidate")[1]
    page.goto(f"{app.url}/studies/kn5501/patients/{patient.split('/')[1]}")
    subject = _subject(fhir, patient, population.tag)
    fhir.update(
        parse_resource({**subject, "status": "on-study"}), if_match=subject["meta"]["versionId"]
    )

    page.get_by_role("radio", name="Contacted").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Save decision").click()
    assert "someone changed this patient's record" in page.get_by_role("alert").inner_text()
    assert _subject(fhir, patient, population.tag)["status"] == "on-study"
    shot(page, "conflict")


def test_a_new_discovery_run_keeps_the_decisions(
    app: App,
    page: Page,
    population: Population,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
) -> None:
    run = run_discovery(redis_client, celery_worker, population)
    assert run.state == "done", run

    patient = _a_candidate(population)
    page.goto(f"{app.url}/studies/kn5501/patients/{patient.split('/')[1]}")
    assert page.locator("#status").inner_text() == "eligible"
    assert page.locator("table.history tbody tr").count() == 1
    page.goto(f"{app.url}/studies/kn5501")
    row = page.locator(
        "table.list tbody tr", has=page.locator(f"a[href$='/{patient.split('/')[1]}']")
    )
    assert "eligible (coordinator)" in row.locator("td").nth(3).inner_text()
    assert row.locator("td").nth(5).inner_text() == "unchanged"


# -- the funnel --------------------------------------------------------------------------


def test_the_funnel_equals_the_screen_summary_on_the_same_data(
    app: App, page: Page, population: Population, tmp_path: Path
) -> None:
    summary = tmp_path / "summary.json"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "fhir-match"),
            "screen",
            "--input",
            str(population.folder / "fhir"),
            "--as-of",
            AS_OF,
            "--output",
            str(tmp_path / "screen.ndjson"),
            "--summary",
            str(summary),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    funnel = json.loads(summary.read_text())["funnel"]

    page.goto(f"{app.url}/studies/kn5501/funnel")
    table = {
        row.locator("th").inner_text(): row.locator("td").nth(1).inner_text()
        for row in page.locator("table.funnel tbody tr").all()
    }
    assert int(table["Found by discovery"]) == funnel["found"] == PATIENTS
    assert int(table["Candidates"]) == funnel["candidates"]
    assert int(table["Potential candidates"]) == funnel["potential_candidates"]
    removed = {k.split(":")[0]: v for k, v in table.items() if re.match(r"(inc|exc)-\d+:", k)}
    with page.expect_download() as download:
        page.get_by_role("link", name="Download as CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    from_csv = {r["criterion"]: int(r["removed"]) for r in rows if r["criterion"]}
    expected = {c: n for c, n in funnel["removed"].items() if n}
    assert from_csv == expected
    assert set(removed) == set(expected)
    assert page.get_by_role("img").count() == 1  # the chart, with its own title
    shot(page, "funnel")


def test_no_page_is_wider_than_a_phone(app: App, page: Page, population: Population) -> None:
    """At 390 px nothing scrolls sideways: wide tables scroll inside their own region."""
    phone = page.context.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    patient = _a_candidate(population).split("/")[1]
    pages = {
        "studies": "/",
        "candidates": "/studies/kn5501",
        "patient": f"/studies/kn5501/patients/{patient}",
        "funnel": "/studies/kn5501/funnel",
    }
    try:
        for name, path in pages.items():
            phone.goto(f"{app.url}{path}")
            width = phone.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
            assert width[0] <= width[1], (name, width)
            shot(phone, f"{name}-390")
    finally:
        phone.close()


# -- leaving -----------------------------------------------------------------------------


def test_signing_out_ends_the_session(app: App, page: Page) -> None:
    page.goto(f"{app.url}/studies/kn5501")
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert page.get_by_role("heading", name="Signed out").is_visible()
    again = page.goto(f"{app.url}/studies/kn5501")
    assert again is not None
    assert again.status == 401


def test_the_app_log_holds_no_patient_data_or_tokens(app: App, population: Population) -> None:
    log = app.log.read_text()
    assert "eyJ" not in log  # no JWT
    assert "code=" not in log
    assert "state=" not in log
    for patient in population.listed:
        assert patient.split("/")[1] not in log


def test_without_sign_in_the_app_serves_loopback_as_the_local_user(
    population: Population, first_run: runs.Run, tmp_path: Path, fhir: FhirClient
) -> None:
    process, url = start_app(tmp_path / "app.log", {"FHIR_MATCH_TAG": population.tag})
    try:
        with httpx.Client(base_url=url, timeout=30) as browser:
            home = browser.get("/")
            assert home.status_code == 200
            assert "local user (no sign-in)" in home.text
            patient = sorted(p for p, o in population.listed.items() if o == "potential-candidate")[
                0
            ]
            page = browser.get(f"/studies/kn5501/patients/{patient.split('/')[1]}")
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            version = re.search(r'name="version" value="([^"]+)"', page.text)
            assert csrf
            assert version
            saved = browser.post(
                f"/studies/kn5501/patients/{patient.split('/')[1]}/decision",
                data={
                    "csrf": csrf[1],
                    "version": version[1],
                    "decision": "ineligible",
                    "reason": "moved away",
                },
            )
            assert saved.status_code == 303
        assert _subject(fhir, patient, population.tag)["status"] == "ineligible"
    finally:
        process.terminate()
        process.wait(timeout=30)
    refused = subprocess.run(
        [str(Path(sys.executable).parent / "fhir-match"), "review", "--host", "0.0.0.0"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("FHIR_MATCH_REVIEW")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "loopback" in refused.stderr

"""The review templates rendered as the app renders them: what a coordinator (and a screen
reader) gets back after a refused decision, and a funnel chart that fits any width."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

from fhir_match.evaluate.study import load_study
from fhir_match.funnel import Funnel
from fhir_match.review.decisions import DECISIONS, Decision
from fhir_match.review.pages import Invalid, funnel_steps, review_templates

SHANGHAI = ZoneInfo("Asia/Shanghai")


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside the element with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def _render(template: str, **context: Any) -> str:
    env = review_templates(SHANGHAI).env
    env.globals["url_for"] = lambda *_, **__: "/static/app.css"
    base = {"user": None, "csrf": "token", "smart": False, "flash": None}
    return env.get_template(template).render(**{**base, **context})


def _patient_page(**context: Any) -> str:
    return _render(
        "patient.html",
        study=load_study("kn5501"),
        subject={"status": "screening", "meta": {"versionId": "3"}},
        patient_id="p1",
        name="Patient/p1",
        person={"birthDate": "1980", "gender": "female"},
        age="45 or 46",
        status_shown="contacted",
        match={"outcome": "candidate", "asOf": "2026-06-01"},
        criteria=[],
        titles={},
        lines={},
        decisions=DECISIONS,
        can_decide=True,
        **context,
    )


def test_ineligible_without_a_reason_is_an_announced_error_on_the_field() -> None:
    """Defect: the error showed in the success box, unannounced, the choice cleared and the
    field unmarked."""
    html = _patient_page(
        history=[],
        conflict=None,
        invalid=Invalid("say why the patient is ineligible", "reason", "ineligible", "  "),
    )
    tags = _tags(html)
    alert = [a for t, a in tags if a.get("role") == "alert"]
    assert len(alert) == 1
    assert alert[0]["class"] == "error"  # not the green "flash" of a success
    assert alert[0]["id"] == "decision-error"
    reason = next(a for t, a in tags if t == "textarea")
    assert reason["aria-invalid"] == "true"
    assert reason["aria-describedby"] == "decision-error"
    checked = [a["value"] for t, a in tags if t == "input" and "checked" in a]
    assert checked == ["ineligible"]
    assert 'class="flash"' not in html
    assert "Not saved: say why the patient is ineligible." in html


def test_an_error_flash_is_an_alert_and_a_saved_one_a_status() -> None:
    error = _render("error.html", message="x", flash={"text": "Not saved: refused.", "error": True})
    assert ("p", {"class": "error", "role": "alert"}) in _tags(error)
    saved = _render("error.html", message="x", flash={"text": "Saved: Eligible.", "error": False})
    assert ("p", {"class": "flash", "role": "status"}) in _tags(saved)


def test_the_status_and_history_read_in_the_coordinators_words_and_the_sites_zone() -> None:
    """Defects: "screening" shown for contacted; decision history in UTC beside evidence in
    the record's offset."""
    history = [_decision("contacted", "2026-11-25T02:00:00+00:00")]
    html = _patient_page(history=history, conflict={"status": "contacted"}, invalid=None)
    assert '<strong id="status">contacted</strong>' in html
    assert "screening" not in html
    assert "2026-11-25 10:00 CST" in html
    assert "+00:00" not in html


def _decision(decision: str, at: str) -> Decision:
    return Decision(decision, "", "Casey", at)


def test_the_funnel_chart_fits_its_container_and_keeps_whole_labels() -> None:
    """Defect: labels cut mid-word, the chart fixed at 900 px."""
    study = load_study("kn5501")
    funnel = Funnel(
        removed=tuple((c.id, 3 if c.id == "inc-7" else 0) for c in study.criteria),
        candidates=20,
        potential_candidates=38,
    )
    steps = funnel_steps(funnel, study)
    html = _render(
        "funnel.html", study=study, funnel=funnel, steps=steps, run="2026-11-25", later=[]
    )
    for step in steps:
        assert f'<span class="label">{step["label"]}</span>' in html
    svgs = [a for t, a in _tags(html) if t == "svg"]
    assert svgs
    assert all(a.get("width") == "100%" for a in svgs)
    assert all(a.get("width", "").endswith("%") for t, a in _tags(html) if t == "rect")
    assert 'width="900"' not in html

"""The review pages: studies, a study's candidate list, a patient's evidence and decision,
the latest run's funnel. Each handler reads the lists (and writes decisions) in the store
discovery wrote them to, and patients and evidence in the EHR through the user's token;
it builds plain rows with the pure modules beside it, and renders a template."""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from fhir_match.candidates import RUNS_LOOKED_AT
from fhir_match.config import FhirSettings, research_study_setting
from fhir_match.errors import FhirError
from fhir_match.evaluate.study import Study
from fhir_match.fhir import FhirClient
from fhir_match.funnel import Funnel
from fhir_match.normalise import Normaliser
from fhir_match.records import Json
from fhir_match.review import reads
from fhir_match.review.config import ReviewSettings
from fhir_match.review.decisions import (
    DECISIONS,
    Coordinator,
    DecisionError,
    decision_history,
    decision_transaction,
    status_word,
)
from fhir_match.review.evidence import describe, grouped, missing
from fhir_match.review.listing import (
    SORT_KEYS,
    Snapshot,
    age_text,
    candidate_rows,
    dropped_since,
    filter_rows,
    patient_ages,
    patient_name,
    snapshot_of,
    sort_rows,
)
from fhir_match.review.smart import User
from fhir_match.review.times import shown_time
from fhir_match.writeback import (
    RecordedRun,
    criteria_of,
    ehr_local,
    ehr_reference,
    find_study,
    funnel_of,
    last_complete,
    match_of,
    patient_of,
    read_subjects,
    recorded_run,
    run_groups,
    run_state_of,
)

__all__ = ["Invalid", "Pages", "review_templates"]

PAGE_TIMEOUT_S = 20.0
TEMPLATES = Path(__file__).parent / "templates"


def review_templates(zone: ZoneInfo) -> Jinja2Templates:
    """The pages' templates, with ``local``: any time shown in the site's ``zone``."""
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.filters["local"] = lambda value: shown_time(str(value or ""), zone)
    return templates


@dataclass(frozen=True)
class Invalid:
    """A decision the form sent that cannot be saved: why, the field to fix, and what the
    coordinator chose and wrote (kept on the page they get back)."""

    message: str
    field: str
    decision: str
    reason: str


@dataclass(frozen=True)
class Pages:
    settings: ReviewSettings
    studies: dict[str, Study]
    templates: Jinja2Templates
    user_of: Callable[[Request], User | None]
    normalisers: Mapping[str, Normaliser]
    """Each study's normaliser: evidence values in the units the rules read them in."""

    # -- plumbing ---------------------------------------------------------------------------

    def _client(self, user: User) -> FhirClient:
        """The EHR, with the user's token: patients and evidence."""
        auth: Any = "bearer" if user.access_token else "none"
        return FhirClient(
            FhirSettings(
                self.settings.fhir_base_url,
                auth=auth,
                token=user.access_token,
                timeout_s=PAGE_TIMEOUT_S,
                max_retries=2,
                max_wait_s=10.0,
            )
        )

    def _store(self, user: User) -> FhirClient:
        """Where the lists are: a write store of their own, reached with its own settings
        (never the user's token), else the EHR itself."""
        store = self.settings.store
        if store is None:
            return self._client(user)
        return FhirClient(replace(store, timeout_s=PAGE_TIMEOUT_S, max_retries=2, max_wait_s=10.0))

    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        context.setdefault("user", self.user_of(request))
        context["csrf"] = request.session.get("csrf", "")
        context["smart"] = self.settings.smart
        context["flash"] = request.session.pop("flash", None)
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    def csrf_ok(self, request: Request, sent: str) -> bool:
        """A state change carries the session's own CSRF token (forms hold it hidden)."""
        expected = str(request.session.get("csrf", ""))
        return bool(expected) and secrets.compare_digest(sent, expected)

    def _signed_in(self, request: Request) -> User | Response:
        user = self.user_of(request)
        if user is None:
            return self.render(request, "signin.html", status=401, user=None)
        return user

    def _study(self, study_id: str) -> Study:
        study = self.studies.get(study_id)
        if study is None:
            raise LookupError(f"no study {study_id!r} here")
        return study

    # -- pages ------------------------------------------------------------------------------

    def home(self, request: Request) -> Response:
        user = self._signed_in(request)
        if isinstance(user, Response):
            return user
        overview = []
        with self._store(user) as store:
            for study in self.studies.values():
                ref = self._study_ref(store, study)
                rows = (
                    candidate_rows(
                        list(read_subjects(store, study, ref, self.settings.tag)), {}, None, None
                    )
                    if ref and user.grant.can_read("ResearchSubject")
                    else []
                )
                groups = run_groups(store, ref, self.settings.tag, RUNS_LOOKED_AT) if ref else []
                source = _source_context(groups, self.settings.zone)
                overview.append(
                    {
                        "study": study,
                        "written": ref is not None,
                        "candidates": sum(r.outcome == "candidate" for r in rows),
                        "potential": sum(r.outcome == "potential-candidate" for r in rows),
                        "decided": sum(r.decided for r in rows),
                        "last_run": source["complete"].recorded if source["complete"] else "",
                        "later": source["later"],
                    }
                )
        return self.render(request, "studies.html", overview=overview)

    def _study_ref(self, client: FhirClient, study: Study) -> str | None:
        """The study's ResearchStudy, found as discovery finds it."""
        configured = dict(self.settings.research_studies).get(research_study_setting(study.id))
        return find_study(client, study, self.settings.tag, configured or "")

    def _runs(
        self, client: FhirClient, ref: str
    ) -> tuple[list[Json], Snapshot | None, Snapshot | None]:
        """The study's recent run Groups (newest first), and the snapshots of its last two
        complete runs: "since the previous run" compares complete runs only."""
        groups = run_groups(client, ref, self.settings.tag, RUNS_LOOKED_AT)
        base = self.settings.ehr_base
        complete = [snapshot_of(g, base) for g in groups if run_state_of(g).state == "complete"]
        return (
            groups,
            complete[0] if complete else None,
            complete[1] if len(complete) > 1 else None,
        )

    def study(self, request: Request) -> Response:
        user = self._signed_in(request)
        if isinstance(user, Response):
            return user
        study = self._study(request.path_params["study"])
        query = request.query_params
        base = self.settings.ehr_base
        with self._store(user) as store, self._client(user) as ehr:
            ref = self._study_ref(store, study)
            subjects = list(read_subjects(store, study, ref, self.settings.tag)) if ref else []
            groups, latest, previous = self._runs(store, ref) if ref else ([], None, None)
            people = reads.patients(ehr, [patient_of(s, base) for s in subjects], user.grant)
        rows = candidate_rows(subjects, people, latest, previous, base)
        shown = sort_rows(
            filter_rows(
                rows,
                outcome=query.get("outcome", ""),
                status=query.get("status", ""),
                change=query.get("change", ""),
            ),
            query.get("sort", ""),
            descending=query.get("order") == "desc",
        )
        return self.render(
            request,
            "study.html",
            study=study,
            rows=shown,
            total=len(rows),
            statuses=sorted({r.status for r in rows}),
            changes=sorted({r.change for r in rows}),
            dropped=dropped_since(latest, previous),
            query=dict(query),
            sort_keys=SORT_KEYS,
            has_run=bool(groups),
            **_source_context(groups, self.settings.zone),
        )

    def patient(
        self,
        request: Request,
        conflict: dict[str, Any] | None = None,
        invalid: Invalid | None = None,
    ) -> Response:
        """A patient's page; after a refused decision (``conflict``, ``invalid``) with the
        reason, the coordinator's choice kept."""
        user = self._signed_in(request)
        if isinstance(user, Response):
            return user
        study = self._study(request.path_params["study"])
        patient_id = request.path_params["patient"]
        base = self.settings.ehr_base
        with self._store(user) as store, self._client(user) as ehr:
            subject = reads.find_subject(store, study, patient_id, self.settings.tag)
            if subject is None:
                return self.render(
                    request,
                    "error.html",
                    status=404,
                    message="fhir-match has not listed this patient for this study.",
                )
            criteria = [
                replace(c, evidence=tuple(ehr_local(r, base) for r in c.evidence))
                for c in criteria_of(subject)
            ]
            cited = sorted({r for c in criteria for r in c.evidence})
            found = reads.cited_resources(ehr, cited, user.grant)
            person = reads.patients(ehr, [f"Patient/{patient_id}"], user.grant).get(
                f"Patient/{patient_id}"
            )
            history = (
                decision_history(reads.decision_provenances(store, str(subject["id"])))
                if user.grant.can_read("Provenance")
                else []
            )
        medications = {k: v for k, v in found.items() if k.startswith("Medication/")}
        evidence = {
            ref: describe(
                found[ref], medications, self.settings.zone, self.normalisers.get(study.id)
            )
            if ref in found
            else missing(ref, user.grant.can_read(ref.split("/", 1)[0]))
            for ref in cited
        }
        lines = {c.id: grouped([evidence[r] for r in c.evidence]) for c in criteria}
        order = {c.id: i for i, c in enumerate(study.criteria)}
        titles = {c.id: c.title for c in study.criteria}
        needs_human = sorted(
            criteria, key=lambda c: (c.result != "unknown", order.get(c.id, len(order)))
        )
        match = match_of(subject)
        as_of = str(match.get("asOf") or "")
        on = datetime.fromisoformat(as_of).date() if as_of else None
        return self.render(
            request,
            "patient.html",
            status=409 if conflict else 422 if invalid else 200,
            study=study,
            subject=subject,
            patient_id=patient_id,
            name=patient_name(person) or f"Patient/{patient_id}",
            person=person,
            age=age_text(patient_ages(person, on)) if on else "",
            status_shown=status_word(str(subject.get("status") or "")),
            match=match,
            criteria=needs_human,
            titles=titles,
            lines=lines,
            history=history,
            decisions=DECISIONS,
            can_decide=user.grant.can_decide(),
            conflict=conflict,
            invalid=invalid,
        )

    async def decide(self, request: Request) -> Response:
        user = self.user_of(request)
        if user is None:
            return self.render(request, "signin.html", status=401, user=None)
        async with request.form() as form:
            fields = {k: str(v) for k, v in form.items()}
        if not self.csrf_ok(request, fields.get("csrf", "")):
            return self.render(
                request,
                "error.html",
                status=403,
                message="This form has expired. Reload the page and try again.",
            )
        if not user.grant.can_decide():
            return self.render(
                request,
                "error.html",
                status=403,
                message="Your access does not include recording decisions.",
            )
        return await run_in_threadpool(self._decide, request, user, fields)

    def _decide(self, request: Request, user: User, fields: dict[str, str]) -> Response:
        study = self._study(request.path_params["study"])
        patient_id = request.path_params["patient"]
        page = f"{self.settings.base}/studies/{study.id}/patients/{patient_id}"
        with self._store(user) as client:
            subject = reads.find_subject(client, study, patient_id, self.settings.tag)
            if subject is None:
                return self.render(request, "error.html", status=404, message="No such subject.")
            seen = fields.get("version", "")
            current = str((subject.get("meta") or {}).get("versionId") or "")
            conflict = {"status": status_word(str(subject.get("status") or ""))}
            if seen != current:
                return self.patient(request, conflict=conflict)
            try:
                bundle = decision_transaction(
                    subject,
                    fields.get("decision", ""),
                    fields.get("reason", ""),
                    Coordinator(ehr_reference(user.fhir_user, self.settings.ehr_base), user.name),
                    datetime.now(UTC).isoformat(timespec="seconds"),
                    self.settings.tag,
                )
            except DecisionError as exc:
                chosen = Invalid(
                    str(exc), exc.field, fields.get("decision", ""), fields.get("reason", "")
                )
                return self.patient(request, invalid=chosen)
            try:
                client.transaction(bundle)
            except FhirError as exc:
                if exc.status in (409, 412):
                    return self.patient(request, conflict=conflict)
                if exc.status is None or exc.status >= 500:
                    raise
                # Refused as invalid: the coordinator sees why (the server's own words).
                request.session["flash"] = {
                    "text": f"Not saved: the FHIR server refused it ({exc.outcome}).",
                    "error": True,
                }
                return RedirectResponse(page, status_code=303)
        label = DECISIONS[fields["decision"]][1]
        request.session["flash"] = {"text": f"Saved: {label}.", "error": False}
        return RedirectResponse(page, status_code=303)

    def _latest_funnel(
        self, user: User, study: Study
    ) -> tuple[Funnel | None, dict[str, Any], list[Json]]:
        """The funnel of the last complete full run, its Group, and the study's recent
        Groups (to flag later partial or failed runs)."""
        with self._store(user) as store:
            ref = self._study_ref(store, study)
            groups = run_groups(store, ref, self.settings.tag, RUNS_LOOKED_AT) if ref else []
        for group in groups:
            funnel = funnel_of(group)
            full = funnel is not None and funnel.scope == "full"
            if full and run_state_of(group).state == "complete":
                return funnel, group, groups
        return None, {}, groups

    def funnel(self, request: Request) -> Response:
        user = self._signed_in(request)
        if isinstance(user, Response):
            return user
        study = self._study(request.path_params["study"])
        funnel, group, groups = self._latest_funnel(user, study)
        return self.render(
            request,
            "funnel.html",
            study=study,
            funnel=funnel,
            steps=funnel_steps(funnel, study) if funnel else [],
            run=shown_time(
                str((group.get("meta") or {}).get("lastUpdated") or ""), self.settings.zone
            ),
            run_name=group.get("name", ""),
            later=_source_context(groups, self.settings.zone)["later"],
        )

    def funnel_csv(self, request: Request) -> Response:
        user = self._signed_in(request)
        if isinstance(user, Response):
            return user
        study = self._study(request.path_params["study"])
        funnel, _, _ = self._latest_funnel(user, study)
        if funnel is None:
            return PlainTextResponse("no full discovery run has recorded a funnel yet\n", 404)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", "criterion", "title", "removed", "remaining"])
        for step in funnel_steps(funnel, study):
            writer.writerow(
                [
                    step["label"],
                    step["criterion"],
                    step["title"],
                    step["removed"],
                    step["remaining"],
                ]
            )
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{study.id}-funnel.csv"'},
        )


def _source_context(groups: list[Json], zone: ZoneInfo) -> dict[str, Any]:
    """What the pages say about where the list comes from: the last complete run (with its
    funnel) and the later partial or failed runs, newest first; when, in the site's zone."""
    complete, later = last_complete(groups)
    return {
        "complete": _run_shown(complete, zone) if complete else None,
        "later": [_run_shown(g, zone) for g in later],
    }


def _run_shown(group: Json, zone: ZoneInfo) -> RecordedRun:
    """A run as recorded, its time in the site's zone (the record keeps the server's)."""
    when = str((group.get("meta") or {}).get("lastUpdated") or "")
    return replace(recorded_run(group), recorded=shown_time(when, zone))


def _step(
    label: str, removed: int, remaining: int, criterion: str = "", title: str = ""
) -> dict[str, Any]:
    return {
        "label": label,
        "criterion": criterion,
        "title": title,
        "removed": removed,
        "remaining": remaining,
    }


def funnel_steps(funnel: Funnel, study: Study) -> list[dict[str, Any]]:
    """The funnel as rows top to bottom: found, each criterion's removal (those that removed
    somebody), then potential candidates and candidates. Counts are the run's own."""
    titles = {c.id: c.title for c in study.criteria}
    remaining = funnel.found
    steps = [_step("Found by discovery", 0, remaining)]
    if funnel.not_evaluated:
        remaining -= funnel.not_evaluated
        steps.append(_step("Could not be evaluated", funnel.not_evaluated, remaining))
    for criterion, count in funnel.removed:
        if count:
            remaining -= count
            title = titles.get(criterion, "")
            steps.append(_step(f"{criterion}: {title}", count, remaining, criterion, title))
    steps.append(_step("Potential candidates", 0, funnel.potential_candidates))
    steps.append(_step("Candidates", 0, funnel.candidates))
    return steps

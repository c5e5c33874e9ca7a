"""The `funnel` command line. Thin: parses arguments, calls the modules that do the work, prints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email import policy as email_policy
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from engine.cli.bounces import register as register_bounces
from engine.cli.common import console, err, event_time, loaded_funnels, named_funnel, named_funnels, parse_time
from engine.cli.experiments import register as register_experiments
from engine.cli.imports import register as register_import
from engine.cli.maps import register as register_map
from engine.cli.ops import register as register_ops
from engine.cli.ops_user import register as register_ops_user
from engine.cli.outbox import register as register_outbox

if TYPE_CHECKING:
    from engine.authoring.virtual_timeline import Subjects
    from engine.authoring.virtualclock import LeadRun
    from engine.core.definition import Funnel
    from engine.mail.templates import RenderedEmail

app = typer.Typer(
    help="Marketing funnels as code: validate, simulate, test and run funnels defined in YAML.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def validate(
    paths: list[str] = typer.Argument(None, help="Funnel files, folders or ids (default: funnels/)."),
    emails: Path = typer.Option(Path("emails"), help="Folder of email templates."),
) -> None:
    """Check funnel files (shape, graph, templates, where `webhook` steps call: every error names
    file:line:column) and, in the settings, the forms (page, confirmation email, a funnel that enters on
    each form's event) and where webhook subscriptions post."""
    from engine.authoring.form_checks import check_forms
    from engine.authoring.funnel_lookup import find_funnels
    from engine.core.webhook_targets import url_problem
    from engine.mail.templates import TemplateLibrary
    from engine.settings import get_settings

    settings = get_settings()
    result = find_funnels(paths or ["funnels"], Path("funnels"), emails, settings.webhook_targets())
    for error in result.errors:
        err.print(str(error), markup=False, highlight=False, soft_wrap=True)
    if result.errors:
        err.print(f"[red]{len(result.errors)} error(s)[/red] in {len(result.files)} file(s)")
        raise typer.Exit(1)
    for funnel in result.funnels:
        steps = sum(len(s.steps) for s in funnel.stages)
        console.print(
            f"[green]ok[/green] {funnel.id} ({len(funnel.stages)} stages, {steps} steps, version {funnel.version})"
        )
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(settings.retention.describe(), markup=False, highlight=False, soft_wrap=True)
    # The forms belong to the project: they are checked with its funnels, not beside a file or folder
    # checked on its own (which funnel a form feeds is only known when all of them are loaded).
    everything = not paths or any(Path(p).resolve() == settings.funnels_dir.resolve() for p in paths)
    form_errors = check_forms(settings, result.funnels, TemplateLibrary(emails)) if everything else []
    targets = settings.webhook_targets()
    for name, subscription in sorted(settings.webhooks.subscriptions.items()) if everything else []:
        problem = url_problem(subscription.url, targets)
        if problem is not None:
            form_errors.append(f"webhooks.{name}.url: {problem}")
    for message in form_errors:
        err.print(f"settings: {message}", markup=False, highlight=False, soft_wrap=True)
    if form_errors:
        err.print(f"[red]{len(form_errors)} error(s)[/red] in the settings")
        raise typer.Exit(1)
    for form_id in sorted(settings.forms) if everything else []:
        console.print(f"[green]ok[/green] form {form_id}")


@app.command()
def schema(
    output: Path = typer.Option(Path("config/funnel.schema.json"), "--output", "-o", help="Where to write it."),
) -> None:
    """Write the funnel files' JSON Schema (editors use it for completion and checks)."""
    from engine.authoring.validation import write_schema

    write_schema(output)
    console.print(f"wrote {output}")


def _subjects(emails: Path, funnel: Funnel | None = None) -> Subjects:
    """Subjects as each virtual lead reads them, from the configured sender."""
    from engine.authoring.virtual_timeline import Subjects
    from engine.mail.templates import Sender, TemplateLibrary
    from engine.settings import get_settings

    s = get_settings().sender
    return Subjects(TemplateLibrary(emails), Sender(s.name, s.postal_address, s.website), funnel)


@app.command()
def simulate(
    funnel: str = typer.Argument(..., help="Funnel file or id."),
    leads: int = typer.Option(1000, "--leads", "-n", min=1, help="Number of virtual leads."),
    days: int = typer.Option(30, "--days", "-d", min=1, help="Days of virtual time."),
    events: Path | None = typer.Option(None, "--events", help="YAML event mix (default: 50% open, 30% click, 5% buy)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same figures."),
    lead: int | None = typer.Option(None, "--lead", help="Print this lead's (1..N) full timeline."),
    start: str = typer.Option("2026-11-02", "--start", help="First day (UTC date)."),
    arrivals: float = typer.Option(1.0, "--arrivals", help="Days over which leads sign up."),
    emails: Path = typer.Option(Path("emails"), help="Folder of email templates."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object of the figures."),
    timelines: Path | None = typer.Option(
        None, "--timelines", help="Write every lead's timeline to this file, one JSON object a line."
    ),
    language: list[str] = typer.Option(
        None,
        "--language",
        help="A lead language (BCP 47 tag, e.g. fr-CA); repeat for a mix: each lead takes one at random,"
        " and emails are counted by the language read. Default: the funnel's default language.",
    ),
) -> None:
    """Run the funnel on a virtual clock with many leads; print stage counts per day and conversions."""
    from engine.authoring.simulation import DEFAULT_MIX, MixError, load_mix
    from engine.authoring.simulation import simulate as run_simulation
    from engine.authoring.simulation_output import print_simulation

    definition = named_funnel(funnel, emails)
    try:
        mix = load_mix(events) if events else DEFAULT_MIX
    except MixError as exc:
        err.print(f"--events: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for problem in mix.problems(definition):
        err.print(f"--events: {events}: {problem}", markup=False, highlight=False, soft_wrap=True)
    if mix.problems(definition):
        raise typer.Exit(2)
    try:
        first_day = datetime.fromisoformat(start).replace(tzinfo=UTC)
    except ValueError:
        err.print(f"--start: expected a date YYYY-MM-DD, found {start!r}")
        raise typer.Exit(2) from None
    if lead is not None and not 1 <= lead <= leads:
        err.print(f"--lead: expected a lead number from 1 to {leads}, found {lead}")
        raise typer.Exit(2)
    tags = _language_tags(language or [])
    with _timeline_writer(timelines, emails, definition) as each_lead:
        result = run_simulation(
            definition,
            leads=leads,
            days=days,
            seed=seed,
            start=first_day,
            mix=mix,
            emails_dir=emails,
            arrival_days=arrivals,
            sample_lead=lead,
            each_lead=each_lead,
            languages=tags,
        )
    print_simulation(console, result, _subjects(emails, definition) if lead else None, as_json=as_json)


def _language_tags(given: list[str]) -> list[str]:
    from engine.core.languages import LanguageError, canonical

    try:
        return [canonical(tag) for tag in given]
    except LanguageError as exc:
        err.print(f"--language: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None


@contextmanager
def _timeline_writer(
    path: Path | None, emails: Path, funnel: Funnel
) -> Iterator[Callable[[int, LeadRun], None] | None]:
    """`--timelines FILE`: each lead's timeline as one JSON line, written as the lead is simulated."""
    if path is None:
        yield None
        return
    import json
    from zoneinfo import ZoneInfo

    from engine.authoring.virtual_timeline import timeline_record

    subject = _subjects(emails, funnel)
    with path.open("w", encoding="utf-8") as out:

        def write(number: int, run: LeadRun) -> None:
            zone = ZoneInfo(run.lead.timezone or funnel.timezone)
            out.write(json.dumps(timeline_record(number, run, zone, subject), ensure_ascii=False) + "\n")

        yield write
    err.print(f"wrote {path}", markup=False, highlight=False)


@app.command("test")
def test_scenarios(
    paths: list[Path] = typer.Argument(None, help="Scenario files or folders (default: funnels/)."),
    emails: Path = typer.Option(Path("emails"), help="Folder of email templates."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print each scenario's timeline."),
) -> None:
    """Run the marketers' scenarios (`*.scenarios.yaml`) on the virtual clock."""
    from zoneinfo import ZoneInfo

    from engine.authoring.scenarios import ScenarioError, load_scenarios, run_file, scenario_files
    from engine.authoring.virtual_timeline import timeline_lines

    targets = paths or [Path("funnels")]
    files = scenario_files(targets)
    if not files:
        err.print(f"no *.scenarios.yaml files in {', '.join(map(str, targets))}")
        raise typer.Exit(1)
    funnel_dirs = sorted({f.parent for f in files})
    funnels = {f.id: f for f in loaded_funnels(funnel_dirs, emails)}
    passed = failed = 0
    for file in files:
        try:
            outcomes = run_file(file, funnels, lambda funnel: _subjects(emails, funnel))
        except ScenarioError as exc:
            err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
            failed += 1
            continue
        subject = _subjects(emails, funnels.get(load_scenarios(file).funnel))
        for outcome in outcomes:
            mark = "[green]PASS[/green]" if outcome.passed else "[red]FAIL[/red]"
            console.print(f"{mark} {file}: {outcome.scenario}", highlight=False)
            for failure in outcome.failures:
                console.print(f"     {failure}", markup=False, highlight=False, soft_wrap=True)
            if (verbose or not outcome.passed) and outcome.run is not None:
                zone = ZoneInfo(outcome.run.lead.timezone or "UTC")
                for line in timeline_lines(outcome.run, zone, subject):
                    console.print(f"       {line}", markup=False, highlight=False, soft_wrap=True)
            passed += outcome.passed
            failed += not outcome.passed
    console.print(f"{passed} scenarios passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


DEMO_LEADS = (
    ("sam.taylor@acme-packaging.example", "Sam", "Acme Packaging", 35, "Europe/London"),
    ("priya.shah@northwind-foods.example", "Priya", "Northwind Foods", 240, "Europe/London"),
    ("luis.ortega@bayside-cafe.example", "Luis", "Bayside Cafe", 8, "America/Los_Angeles"),
)


def _demo_signups(runner: object, now: datetime) -> int:
    """Three sample leads fill in the example funnel's form, once (event ids make it idempotent)."""
    from engine.core.own_events import engine_id
    from engine.store import leads as store

    engine = runner.engine  # type: ignore[attr-defined]
    recorded = 0
    with engine.begin() as conn:
        for i, (email, first, company, employees, zone) in enumerate(DEMO_LEADS, 1):
            lead_id = store.upsert_lead(
                conn,
                email,
                attributes={"first_name": first, "company": company, "employees": employees},
                timezone=zone,
                consent="subscribed",
                consent_source="demo",
                now=now,
            )
            new = store.NewEvent(
                engine_id("demo", "signup", i),
                lead_id,
                "form_submitted",
                now,
                {"form": "cost-of-not-recycling"},
                "demo",
            )
            recorded += store.record_events(conn, [new], now=now)[0]
    return recorded


@app.command()
def run(
    once: bool = typer.Option(False, "--once", help="Process everything due now, then exit."),
    now: str | None = typer.Option(None, "--now", help="Pretend the clock says this ISO time (replays, tests)."),
    demo: bool = typer.Option(False, "--demo", help="Sign up three sample leads to the example funnel first."),
) -> None:
    """Run the engine: the scheduler ticks, leads move, emails go out (to a local sink if no relay is set)."""
    import asyncio

    from engine.mail.mailer import CaFileError
    from engine.mail.mime import DkimKeyError
    from engine.runtime.bounce_receiver import ReceiverError
    from engine.runtime.logs import setup
    from engine.runtime.runner import Clock, Runner
    from engine.settings import get_settings
    from engine.store.database import DBAPIError, describe_failure, shown_url

    settings = get_settings()
    setup(settings.log_format, settings.log_level, settings.log_level_libraries)
    _refuse_unsafe_start(settings)
    funnels = loaded_funnels([settings.funnels_dir], settings.emails_dir)
    try:
        runner = Runner(settings, funnels, Clock(parse_time(now, "--now")))
    except (DkimKeyError, CaFileError, ReceiverError) as exc:
        err.print(f"cannot start: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except DBAPIError as exc:
        problem = describe_failure(settings.effective_database_url, exc)
        if problem is None:
            raise
        err.print(f"cannot start: {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    try:
        for definition in funnels:
            console.print(f"[green]loaded[/green] {definition.id} (version {definition.version})")
        where = (
            f"{settings.smtp.host}:{settings.smtp.port}"
            if settings.smtp.host
            else (f"the local sink, stored as .eml files in {settings.data_dir / 'outbox'}")
        )
        shown = shown_url(settings.effective_database_url)
        console.print(f"database: {shown}\nemails go to {where}", markup=False, soft_wrap=True)
        console.print(settings.retention.describe(), markup=False, highlight=False, soft_wrap=True)
        if demo:
            count = _demo_signups(runner, runner.clock())
            console.print(f"demo: {count} sample signup(s) recorded")
        if once:
            totals = asyncio.run(runner.run_once())
            t, m = totals.tick, totals.mail
            console.print(
                f"events {t.events}, steps {t.advanced}, enrolled {t.enrolled}, transitions {t.transitions}, "
                f"emails sent {m.sent}, deferred {m.deferred}, failed {m.failed}, unknown {m.unknown}, "
                f"skipped {m.skipped}"
            )
        else:
            if settings.http.enabled:
                console.print(f"HTTP app (events API, unsubscribe) on http://{settings.http.host}:{settings.http.port}")
            lister = "funnel sink" if runner.sink is not None else "funnel outbox"
            console.print(f"ticking every {settings.tick_seconds:g} s; list emails with `{lister}`; Ctrl-C stops")
            try:
                asyncio.run(runner.run_forever())
            except ReceiverError as exc:  # its port taken: said like a start refused
                err.print(f"cannot start: {exc}", markup=False, highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
    finally:
        runner.close()


@app.command()
def event(
    email: str = typer.Argument(..., help="The lead's email address (created if new)."),
    name: str = typer.Argument(..., help="Event name, e.g. form_submitted, email_clicked, purchase_completed."),
    prop: list[str] = typer.Option([], "--prop", help="A property as key=value; repeat for more."),
    event_id: str | None = typer.Option(None, "--id", help="Idempotency key; replaying an id changes nothing."),
    at: str | None = typer.Option(None, "--at", help="When it happened (ISO time; default now)."),
) -> None:
    """Record one event for a lead; the engine reacts within a tick. As from any other system: the
    engine's own event names and ids cannot be used (an operator enrolls with `funnel lead enroll`)."""
    import re
    import uuid

    from engine.cli.common import lead_address
    from engine.core import own_events
    from engine.settings import get_settings
    from engine.store import leads as store
    from engine.store.database import create_engine_for, upgrade

    if not re.fullmatch(r"[a-z][a-z0-9_.]*", name):
        err.print(f"event name: expected snake_case such as 'email_clicked', found {name!r}")
        raise typer.Exit(2)
    problems = {"NAME": own_events.name_problem(name), "--id": own_events.id_problem(event_id or "")}
    for option, problem in problems.items():
        if problem is not None:
            err.print(f"{option}: {problem}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2)
    email = lead_address(email)
    properties: dict[str, str] = {}
    for item in prop:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"--prop: expected key=value, found {item!r}")
            raise typer.Exit(2)
        properties[key] = value
    settings = get_settings()
    when = event_time(at)
    upgrade(settings.effective_database_url)
    engine = create_engine_for(settings.effective_database_url)
    try:
        with engine.begin() as conn:
            lead_id = store.find_lead_id(conn, email) or store.upsert_lead(conn, email, now=when)
            new = store.NewEvent(event_id or str(uuid.uuid4()), lead_id, name, when, properties, "cli")
            inserted, _ = store.record_events(conn, [new], now=when)
    except ValueError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    if inserted:
        console.print(f"recorded {name} for {email}")
    else:
        console.print(f"already recorded (event id {event_id}); nothing changed")


@app.command()
def plan(
    paths: list[str] = typer.Argument(None, help="Edited funnel files, folders or ids (default: funnels/)."),
    emails: Path = typer.Option(Path("emails"), help="Folder of email templates."),
) -> None:
    """Before publishing an edited funnel: how many leads wait at each changed or removed step and
    stage, and where they will go; for each edited experiment, what happens to the leads assigned to
    each arm and to the leads to come."""
    from rich.table import Table

    from engine.authoring.experiment_plan import experiment_plan
    from engine.authoring.plan import plan as make_plan
    from engine.cli.common import database
    from engine.core.definition import Funnel as FunnelModel
    from engine.store import experiment_assignments, experiment_decisions
    from engine.store import leads as store
    from engine.store.database import connect_read_only

    edited = named_funnels(paths or ["funnels"], emails)
    with database(None) as engine, connect_read_only(engine) as conn:
        positions = store.positions(conn)
        old: dict[str, FunnelModel | None] = {}
        for p in positions:
            if p.version not in old:
                raw = store.get_funnel_definition(conn, p.funnel_id, p.version)
                old[p.version] = FunnelModel.model_validate(raw) if raw else None
        assigned = {d.id: experiment_assignments.in_flight(conn, d.id) for d in edited}
        promoted = experiment_decisions.promoted(conn)
    for definition in edited:
        lines = make_plan(positions, old, definition)
        table = Table(title=f"{definition.id}: leads in flight against version {definition.version}")
        for col in ("stage", "step", "leads", "change", "goes to"):
            table.add_column(col, justify="right" if col == "leads" else "left")
        affected = 0
        for line in lines:
            style = None if line.change == "unchanged" else "yellow"
            affected += line.leads if line.change != "unchanged" else 0
            table.add_row(
                line.stage, line.step or "(end of sequence)", str(line.leads), line.change, line.goes_to, style=style
            )
        console.print(table)
        total = sum(line.leads for line in lines)
        console.print(f"{definition.id}: {total} lead(s) in flight, {affected} affected by the edit")
        for said in experiment_plan(assigned[definition.id], old, definition, promoted.get(definition.id)):
            text = f"{definition.id}: experiment {said.experiment} (step {said.step}): {said.sentence}"
            console.print(text, markup=False, highlight=False, soft_wrap=True)


def _sent_as(template: str, settings: Any, funnel_id: str | None = None) -> tuple[str, str, bool]:
    """(funnel, step, transactional) of the first step of the project's funnels (or of `funnel_id`) that
    sends `template`, or of the form whose confirmation email it is: the message is then built as that
    step's, List-Unsubscribe only on marketing email. An email nothing sends yet is shown as marketing
    email (of `funnel_id` when given)."""
    from engine.authoring.validation import load_funnels
    from engine.core.signup import CONFIRM_FUNNEL_PREFIX, CONFIRM_STEP_PREFIX

    for funnel in load_funnels([settings.funnels_dir], emails_dir=None).funnels:
        if funnel_id is not None and funnel.id != funnel_id:
            continue
        for stage in funnel.stages:
            for step in stage.steps:
                if getattr(step, "send", None) == template:
                    return funnel.id, step.id, bool(getattr(step, "transactional", False))
    if funnel_id is not None:
        return funnel_id, "preview", False
    for form_id, form in sorted(settings.forms.items()):
        if form.confirm_template == template:
            return f"{CONFIRM_FUNNEL_PREFIX}{form_id}", f"{CONFIRM_STEP_PREFIX}0", True
    return "preview", "preview", False


def _funnel_languages(settings: Any, funnel_id: str) -> tuple[str, ...] | None:
    """The languages of the project's funnel `funnel_id`, its default first (None: one language); exit 2
    when there is no such funnel."""
    from engine.authoring.validation import load_funnels

    for funnel in load_funnels([settings.funnels_dir], emails_dir=None).funnels:
        if funnel.id == funnel_id:
            return funnel.languages.declared if funnel.languages is not None else None
    err.print(f"--funnel: no funnel {funnel_id!r} in {settings.funnels_dir}", markup=False, highlight=False)
    raise typer.Exit(2)


def _language_option(tag: str) -> str:
    from engine.core.languages import LanguageError, canonical

    try:
        return canonical(tag)
    except LanguageError as exc:
        err.print(f"--language: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _said_chain(tag: str, tried: list[tuple[str, str | None]], languages: tuple[str, ...]) -> str:
    """`fr-CA: fr-CA (no file) -> fr: emails/x/fr/y.md`: the lookup chain `pick` went through."""
    steps = []
    for language, file in tried:
        if file is None:
            steps.append(f"{language} (no file)")
        elif language not in languages:
            steps.append(f"{language} ({file}, not a language of the funnel)")
        else:
            steps.append(f"{language}: {file}")
    return f"{tag}: " + " -> ".join(steps)


def _preview_message(
    template: str,
    lead: str | None,
    emails: Path,
    to: str | None = None,
    message_id: str | None = None,
    language: str | None = None,
    funnel: str | None = None,
) -> tuple[RenderedEmail, bytes]:
    """The message a lead would get from `template`, built by the mailer's own code, as the exact bytes:
    as the funnel step that sends it (transactional or not), with `message_id` if given. With `language`,
    the lead reads that language, in the translation the funnel (`funnel`, else the one that sends
    `template`) has for it; the chain tried is said first."""
    from engine.core.addresses import AddressError
    from engine.core.outbox_item import OutboxItem
    from engine.core.yamlfile import read_yaml
    from engine.mail.mailer import Mailer
    from engine.mail.templates import TemplateError, TemplateLibrary
    from engine.settings import get_settings

    settings = get_settings()
    email, attributes = "alex@example.com", {"first_name": "Alex", "company": "Example Ltd", "employees": 40}
    if lead is not None and Path(lead).is_file():
        data = read_yaml(Path(lead)).data or {}
        email = str(data.get("email", email))
        attributes = dict(data.get("attributes", {}))
    elif lead is not None:
        email, attributes = lead, {}
    email = to or email
    library = TemplateLibrary(emails)
    if not library.exists(template):
        err.print(f"no template {template!r}: expected {emails}/{template}.md or .html")
        raise typer.Exit(1)
    funnel_id, step, transactional = _sent_as(template, settings, funnel)
    languages: dict[str, tuple[str, ...]] = {}
    if language is not None:
        declared = _funnel_languages(settings, funnel_id)
        if declared is None:
            where = f"funnel {funnel_id!r}" if funnel_id != "preview" else f"no funnel sends {template!r}, and --funnel"
            err.print(f"--language: {where} declares no `languages:`", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        languages[funnel_id] = declared
        console.print(
            _said_chain(language, library.tried(template, language, declared), declared),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    item = OutboxItem(
        0, 0, email, "subscribed", attributes, funnel_id, step, template, "preview", transactional, 0, False,
        language=language,
    )  # fmt: skip
    mailer = Mailer(None, settings, library, funnel_languages=languages)  # type: ignore[arg-type]  # no database
    now = datetime.now(UTC)
    try:
        rendered = mailer.render(item, now)
    except TemplateError as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    try:
        return rendered, mailer.compose(item, now, rendered, message_id).payload
    except AddressError as exc:  # the lead's address, as a sent email's would be checked
        err.print(f"--lead/--to: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def preview(
    template: str = typer.Argument(..., help="Template name, e.g. lead-magnet/report-delivery."),
    lead: str | None = typer.Option(None, "--lead", help="A YAML file (email, attributes) or an address."),
    out: Path = typer.Option(Path("out/preview"), "--out", help="Folder for the files."),
    emails: Path = typer.Option(Path("emails"), help="Folder of email templates."),
    language: str | None = typer.Option(
        None,
        "--language",
        help="The lead's language (a BCP 47 tag, e.g. fr-CA): says the files tried, renders the one used.",
    ),
    funnel: str | None = typer.Option(
        None, "--funnel", help="The funnel (id) whose languages count (default: the funnel that sends TEMPLATE)."
    ),
) -> None:
    """Render one email as a lead would get it: writes the HTML, the text part, the headers and the .eml."""
    tag = _language_option(language) if language is not None else None
    rendered, payload = _preview_message(template, lead, emails, language=tag, funnel=funnel)
    message = BytesParser(policy=email_policy.default).parsebytes(payload)
    out.mkdir(parents=True, exist_ok=True)
    stem = template.replace("/", "--")
    files = {
        out / f"{stem}.html": rendered.html,
        out / f"{stem}.txt": rendered.text,
        out / f"{stem}.headers.txt": "".join(f"{k}: {v}\n" for k, v in message.items()),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    eml = out / f"{stem}.eml"
    eml.write_bytes(payload)
    for path in [*files, eml]:
        console.print(str(path), highlight=False, markup=False, soft_wrap=True)


@app.command("send-test")
def send_test(
    template: str = typer.Argument(..., help="Template name, e.g. lead-magnet/report-delivery."),
    to: str = typer.Option(..., "--to", help="Where to send it."),
    lead: str | None = typer.Option(None, "--lead", help="A YAML file (email, attributes) or an address."),
    emails: Path = typer.Option(Path("emails"), help="Folder of email templates."),
) -> None:
    """Send one rendered email through the configured relay (FUNNEL_SMTP__HOST ...), as the funnel sends
    it, with a Message-ID of its own each time."""
    import asyncio
    from email.utils import make_msgid

    import aiosmtplib

    from engine.mail.mailer import CaFileError, check_ca_file, client_options
    from engine.settings import get_settings

    settings = get_settings()
    smtp = settings.smtp
    if not smtp.host:
        err.print("no relay configured: set FUNNEL_SMTP__HOST (and __PORT, __SECURITY, __USERNAME, __PASSWORD)")
        raise typer.Exit(2)
    try:
        check_ca_file(smtp)
    except CaFileError as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    # A test sent twice is two messages: a mailbox provider may drop a Message-ID it has already seen.
    domain = settings.sender.address.rpartition("@")[2] or "localhost"
    _, payload = _preview_message(template, lead, emails, to=to, message_id=make_msgid("send-test", domain))
    try:
        asyncio.run(
            aiosmtplib.send(
                payload,
                sender=get_settings().sender.address,
                recipients=[to],
                hostname=smtp.host,
                port=smtp.port,
                **client_options(smtp),
            )
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        err.print(f"send failed: {exc}")
        raise typer.Exit(1) from None
    console.print(f"sent {template} to {to} via {smtp.host}:{smtp.port}")


@app.command()
def api(
    host: str | None = typer.Option(None, help="Default: http.host (127.0.0.1)."),
    port: int | None = typer.Option(None, help="Default: http.port (8000)."),
) -> None:
    """Serve the HTTP app alone (events API, unsubscribe), for running it apart from the workers."""
    import uvicorn

    from engine.cli.common import database
    from engine.http.api import create_app
    from engine.runtime.logs import setup
    from engine.settings import get_settings

    settings = get_settings()
    setup(settings.log_format, settings.log_level, settings.log_level_libraries)
    _refuse_unsafe_start(settings, host)
    with database(None, create=True) as engine:
        uvicorn.run(
            create_app(settings, engine),
            host=host or settings.http.host,
            port=settings.http.port if port is None else port,
            log_config=None,  # uvicorn's records go through our scrubbing handler
            timeout_keep_alive=settings.http.keep_alive_s,
        )


def _refuse_unsafe_start(settings: Any, host: str | None = None) -> None:
    problems = settings.start_problems(host)
    for problem in problems:
        err.print(f"cannot start: {problem}", markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)


@app.command()
def secret() -> None:
    """Print a new random key (32 bytes, URL-safe base64) for secret_key or a hook's or webhook's secret."""
    from engine.core.secret_keys import new_key

    console.print(new_key(), markup=False, highlight=False, soft_wrap=True)


register_import(app)
register_ops_user(app)
register_ops(app)
register_map(app)
register_outbox(app)
register_bounces(app)
register_experiments(app)

apikey_app = typer.Typer(help="Keys for the HTTP API.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")


@apikey_app.command("create")
def apikey_create(name: str = typer.Option(..., "--name", help="Who or what uses it, e.g. shop-webhooks.")) -> None:
    """Make a key and print it, once: only its hash is stored."""
    from engine.cli.common import database
    from engine.store import apikeys

    with database(None, create=True) as engine, engine.begin() as conn:
        key = apikeys.create(conn, name, datetime.now(UTC))
    err.print(f"API key '{name}' created. It is shown only this once; store it now:")
    console.print(key, markup=False, highlight=False)


@apikey_app.command("list")
def apikey_list() -> None:
    """The keys: name, prefix, when made, and whether revoked."""
    from rich.table import Table

    from engine.cli.common import database
    from engine.store import apikeys
    from engine.store.database import connect_read_only

    with database(None) as engine, connect_read_only(engine) as conn:
        keys = apikeys.listing(conn)
    table = Table("prefix", "name", "created", "revoked")
    for k in keys:
        table.add_row(k.prefix, k.name, k.created_at.isoformat(), k.revoked_at.isoformat() if k.revoked_at else "")
    console.print(table)


@apikey_app.command("revoke")
def apikey_revoke(prefix: str = typer.Argument(..., help="The key prefix `funnel apikey list` shows.")) -> None:
    """Refuse a key from now on."""
    from engine.cli.common import database
    from engine.store import apikeys

    with database(None) as engine, engine.begin() as conn:
        count = apikeys.revoke(conn, prefix, datetime.now(UTC))
    if not count:
        err.print(f"no active key with prefix {prefix!r}")
        raise typer.Exit(1)
    console.print(f"revoked {prefix}")


db_app = typer.Typer(help="Database schema and upkeep.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations (done automatically by `funnel run`)."""
    from engine.settings import get_settings
    from engine.store.database import current_revision, upgrade

    url = get_settings().effective_database_url
    upgrade(url)
    console.print(f"database at revision {current_revision(url)}")


@db_app.command("prune")
def db_prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go now; change nothing."),
    database_url: str | None = typer.Option(None, "--database-url", help="Default: the settings' database."),
) -> None:
    """Delete what the retention settings say is past its age, now (`funnel run` does it every
    `retention.every_minutes`): the leads' figures are rolled up first, so reports do not change."""
    from datetime import UTC, datetime

    from engine.runtime.pruning import prune, said
    from engine.settings import get_settings
    from engine.store.database import create_engine_for, upgrade

    settings = get_settings()
    retention = settings.retention
    console.print(retention.describe(), markup=False, highlight=False, soft_wrap=True)
    if not retention.on:
        return
    url = database_url or settings.effective_database_url
    upgrade(url)
    engine = create_engine_for(url)
    try:
        done = prune(engine, retention, datetime.now(UTC), dry_run=dry_run)
    finally:
        engine.dispose()
    console.print(("would prune: " if dry_run else "pruned: ") + said(done), markup=False, soft_wrap=True)


@db_app.command("vacuum")
def db_vacuum(
    database_url: str | None = typer.Option(None, "--database-url", help="Default: the settings' database."),
) -> None:
    """Give the space of deleted rows back to the file system (SQLite: VACUUM, which rewrites the file
    and needs as much free disk; PostgreSQL: VACUUM ANALYZE, autovacuum does the rest). Not needed for
    the database to stop growing: both reuse freed space for new rows."""
    from engine.settings import get_settings
    from engine.store.database import create_engine_for, vacuum

    url = database_url or get_settings().effective_database_url
    engine = create_engine_for(url)
    try:
        before, after = vacuum(engine)
    finally:
        engine.dispose()
    console.print(f"vacuumed: {before:,} bytes before, {after:,} after" if before else "vacuumed")


def main() -> None:
    from pydantic import ValidationError

    try:
        app(standalone_mode=True)
    except ValidationError as exc:
        # Settings that do not parse: name each key and what is wrong, not a traceback.
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            err.print(f"settings: {key}: {error['msg']}", markup=False, highlight=False, soft_wrap=True)
        err.print("check config/funnel.toml, .env and FUNNEL_* environment variables")
        raise SystemExit(2) from None

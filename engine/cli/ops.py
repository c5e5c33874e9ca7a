"""What ops ask the database: `funnel report`, `funnel lead show|export|forget`, `funnel watch`, and
`funnel demo-month` to fill a database with a month of made-up leads to ask about.

Thin: the figures are `engine.views.report`'s (an experiment's, `engine.views.experiment_figures`'), the
SQL `engine.store.report_queries`'s, one lead's story `engine.views.lead_timeline`'s, the month
`engine.runtime.month`'s.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from engine.cli.common import DATABASE_HELP, database, fail, lead_address, output_console, say

if TYPE_CHECKING:
    from engine.store.database import Connection
    from engine.store.report_queries import EmailSeen, TransitionSeen
    from engine.views.report import FunnelReport

lead_app = typer.Typer(help="One lead: why it is where it is, everything held about it, erasure.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("watch")(watch)
    app.command("demo-month")(demo_month)
    # `funnel lead show EMAIL`, not `funnel lead EMAIL`: a group cannot take an address and subcommands
    # both (`funnel lead export` would read "export" as an address).
    app.add_typer(lead_app, name="lead")


def _utc(text: str, option: str) -> datetime:
    """A date or time from the command line; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"{option}: expected a date YYYY-MM-DD, found {text!r}", 2) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _known_address(conn: Connection, text: str) -> str:
    """For the commands that look a lead up: the address as `lead_address` takes it, or, for text the
    rules refuse, the lead stored under it before the rules existed (it can still be shown and erased)."""
    from engine.core.addresses import AddressError, lookup_key, normalise
    from engine.store import leads as store

    try:
        return normalise(text)
    except AddressError as exc:
        if store.find_lead_id(conn, text) is not None:
            return lookup_key(text)
        raise fail(f"EMAIL: {exc}", 2) from None


# --------------------------------------------------------------------------------------------------
# funnel report
# --------------------------------------------------------------------------------------------------


def report(
    funnel: str | None = typer.Option(None, "--funnel", help="Only this funnel (id)."),
    since: str | None = typer.Option(None, "--since", help="Only leads who entered on or after this UTC date."),
    language: str | None = typer.Option(
        None,
        "--language",
        help="Only leads of this language (a BCP 47 tag; `de` covers `de-AT` too). With --funnel, leads"
        " without a language count as its default language's.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: a list of funnels' figures."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV, one figure a row: funnel, section, item, figure, value."),
    database_url: str | None = typer.Option(None, "--database-url", help=DATABASE_HELP),
) -> None:
    """Each funnel's figures: leads per stage, stage-to-stage conversion, median and p90 time in stage,
    leads lost to bounces and complaints, and per email: sent, delivered, opened, clicked, unsubscribed,
    bounced, failed, unknown, and hard bounces, soft bounces and complaints as shares of sent. Then each
    experiment: per arm leads assigned and counted, conversions, rate, the lift over the control with its
    interval, the test's state and, once decided, when, how, by whom and why (all leads, whatever --since)."""
    from engine.store import report_queries
    from engine.store.database import connect_read_only
    from engine.views import experiment_figures
    from engine.views import report as figures

    if as_json and as_csv:
        raise fail("--json and --csv: choose one", 2)
    cohort = None if since is None else _utc(since, "--since")
    tag = _language(language)
    with database(database_url) as engine, connect_read_only(engine) as conn:
        unset = default_language(conn, funnel) if tag is not None and funnel is not None else None
        scope = report_queries.Scope(funnel, cohort, tag, unset)
        rows = report_queries.read_rows(conn, scope)
        funnel_ids = {r.funnel for r in rows.stage_counts}
        layouts = report_queries.layouts(conn, funnel_ids)
        experiments = experiment_figures.read_published(conn, funnel_ids, datetime.now(UTC))
    reports = figures.build(rows, layouts, experiments)
    if as_json:
        language_key = {"language": tag} if tag is not None else {}
        typer.echo(json.dumps({"since": since, **language_key, "funnels": [figures.as_dict(r) for r in reports]}))
    elif as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(("funnel", "section", "item", "figure", "value"))
        for r in reports:
            out.writerows(figures.csv_rows(r))
    else:
        console = output_console()
        if not reports:
            say(
                console,
                f"no leads in {'funnel ' + funnel if funnel else 'any funnel'}"
                + (f" in {tag}" if tag else "")
                + (f" since {since}" if since else ""),
            )
        for r in reports:
            _print_report(console, r, since, tag)


def _share(count: int, whole: int) -> str:
    return f"{count} ({count / whole:.0%})" if whole else str(count)


def _language(text: str | None) -> str | None:
    from engine.core.languages import LanguageError, canonical

    if text is None:
        return None
    try:
        return canonical(text)
    except LanguageError as exc:
        raise fail(f"--language: {exc}", 2) from None


def default_language(conn: Connection, funnel: str) -> str | None:
    """The default language of the funnel's newest definition (what a lead without a language reads)."""
    from engine.core.languages import LanguageError, canonical
    from engine.store import report_queries

    languages = (report_queries.newest_definition(conn, funnel) or {}).get("languages") or {}
    try:
        return canonical(languages.get("default", "en")) if languages else None
    except (LanguageError, AttributeError):
        return None


def _print_report(console: Console, r: FunnelReport, since: str | None, language: str | None = None) -> None:
    from engine.core.durations import stay_in_words

    cohort = (f", in {language}" if language else "") + (f", entered since {since}" if since else "")
    exits = ", ".join(f"{reason} {n}" for reason, n in r.exited.items()) or "none"
    say(console, f"\n{r.funnel}: {r.leads} leads{cohort}: {r.active} in a stage, {r.leads - r.active} exited ({exits})")
    stages = Table(title="Stages", title_justify="left")
    stage_columns = ("stage", "now", "reached", "then reached", "conversion", "median time", "p90 time", "stays")
    for column in (*stage_columns, "left: bounced", "left: complained"):
        stages.add_column(column, justify="left" if column in ("stage", "then reached") else "right")
    for s in r.stages:
        conversion = "-" if s.conversion is None else f"{s.conversion:.1%}"
        stages.add_row(
            s.stage, str(s.now), str(s.reached), s.next_stage or "", conversion,
            stay_in_words(s.median_minutes), stay_in_words(s.p90_minutes), str(s.stays),
            str(s.left_bounced), str(s.left_complained),
        )  # fmt: skip
    console.print(stages)
    _print_emails(console, r)
    _print_experiments(console, r, since)


def _print_emails(console: Console, r: FunnelReport) -> None:
    if not r.emails:
        return
    emails = Table(title="Emails (shares of delivered)", title_justify="left")
    columns = (
        "step",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "unsubscribed",
        "bounced",
        "failed",
        "unknown",
        "skipped",
        "waiting",
    )
    for column in columns:
        emails.add_column(column, justify="left" if column == "step" else "right")
    for e in r.emails:
        emails.add_row(
            e.step, str(e.sent), str(e.delivered), _share(e.opened, e.delivered), _share(e.clicked, e.delivered),
            _share(e.unsubscribed, e.delivered), str(e.bounced), str(e.failed), str(e.unknown), str(e.skipped),
            str(e.waiting),
        )  # fmt: skip
    console.print(emails)
    _print_returned(console, r)
    _print_languages(console, r)


def _print_languages(console: Console, r: FunnelReport) -> None:
    """Per email, how many were sent in each language (`-`: sent before languages were recorded)."""
    languages = sorted({lang for e in r.emails for lang in e.sent_by_language})
    if not languages:
        return
    table = Table(title="Sent per language", title_justify="left")
    for column in ("step", *languages):
        table.add_column(column, justify="left" if column == "step" else "right")
    for e in r.emails:
        table.add_row(e.step, *(str(e.sent_by_language.get(lang, 0)) for lang in languages))
    console.print(table)


def _print_experiments(console: Console, r: FunnelReport, since: str | None) -> None:
    from engine.cli.experiments import print_experiment

    if r.experiments:
        all_leads = " (every lead assigned, whatever --since)" if since else ""
        say(console, f"\nExperiments{all_leads}")
    for e in r.experiments:
        print_experiment(console, e)


def _print_returned(console: Console, r: FunnelReport) -> None:
    """Per email, what came back after the relay took it, as shares of sent (what providers judge by)."""
    from engine.views.report import returned

    table = Table(title="Bounces and complaints (shares of sent)", title_justify="left")
    for column in ("step", "sent", "hard bounces", "soft bounces", "complaints"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for e in r.emails:
        shares = (f"{n} ({e.rate_of_sent(n):.1%})" if e.sent else str(n) for _, n in returned(e))
        table.add_row(e.step, str(e.sent), *shares)
    console.print(table)


# --------------------------------------------------------------------------------------------------
# funnel lead show | export | forget
# --------------------------------------------------------------------------------------------------


@lead_app.command("show")
def lead_show(
    email: str = typer.Argument(..., help="The lead's email address."),
    utc: bool = typer.Option(False, "--utc", help="Times in UTC (default: the lead's own time zone)."),
    database_url: str | None = typer.Option(None, "--database-url", help=DATABASE_HELP),
) -> None:
    """Where the lead is in each funnel and why, then everything that happened to it, in time order:
    events, stage transitions with their causes, emails and their outcomes, consent records."""
    from zoneinfo import ZoneInfo

    from engine.store.database import connect_read_only
    from engine.views import lead_timeline

    with database(database_url) as engine, connect_read_only(engine) as conn:
        found = lead_timeline.read(conn, _known_address(conn, email))
    if found is None:
        raise fail(f"no lead {email!r}")
    lead = found.lead
    zone_name = "UTC" if utc else (lead["timezone"] or "UTC")
    zone = ZoneInfo(zone_name)

    def local(at: datetime) -> str:
        return at.astimezone(zone).strftime("%Y-%m-%d %H:%M")

    console = output_console()
    tags = ", ".join(lead["tags"]) or "none"
    zone_set = lead["timezone"] or "not set"
    language = lead["language"] or "not set (the funnel's default)"
    say(
        console,
        f"{found.email}: consent {lead['consent_status']}, tags {tags}, score {lead['score']}, zone {zone_set},"
        f" language {language}",
    )
    if lead["attributes"]:
        say(console, "attributes: " + ", ".join(f"{k}={v}" for k, v in sorted(lead["attributes"].items())))
    if found.suppressed:
        say(console, f"suppressed ({found.suppressed}): no email will go to this address")
    for p in found.places:
        if p.status == "exited":
            where = f"exited from {p.stage} ({p.exit_reason}) at {local(p.since)}"
        else:
            where = f"in {p.stage}" + (f", step {p.step}" if p.step else "") + f", since {local(p.since)}"
        say(console, f"{p.funnel}: {where}, because {p.why}")
    table = Table(title=f"Timeline ({zone_name})", title_justify="left")
    for column in ("time", "funnel", "what"):
        table.add_column(column, overflow="fold")
    for entry in found.entries:
        table.add_row(local(entry.at), entry.funnel or "", entry.what)
    console.print(table)


@lead_app.command("export")
def lead_export(
    email: str = typer.Argument(..., help="The lead's email address."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the JSON here (default: stdout)."),
    database_url: str | None = typer.Option(None, "--database-url", help=DATABASE_HELP),
) -> None:
    """Everything held about the lead, as JSON (a data subject's access or portability request)."""
    from engine.store.database import connect_read_only
    from engine.views import lead_timeline

    with database(database_url) as engine, connect_read_only(engine) as conn:
        data = lead_timeline.export(conn, _known_address(conn, email), datetime.now(UTC))
    if data is None:
        raise fail(f"no lead {email!r}")
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    Console(stderr=True).print(f"wrote {output}", markup=False, highlight=False)


@lead_app.command("enroll")
def lead_enroll(
    email: str = typer.Argument(..., help="The lead's email address (created if new)."),
    funnel_ref: str = typer.Argument(
        ..., metavar="FUNNEL", help="A funnel (id or file) whose entry has `manual: true`."
    ),
    by: str = typer.Option(os.environ.get("USER") or "ops", "--by", help="Who; recorded as the cause."),
    at: str | None = typer.Option(None, "--at", help="When (ISO time; default now), e.g. to replay."),
    database_url: str | None = typer.Option(None, "--database-url", help=DATABASE_HELP),
) -> None:
    """Put a lead in a funnel by hand. Recorded as an event, so the engine enrolls the lead on its next
    tick like any other entry, with the cause `manual (BY)`; a lead already in the funnel stays as it is."""
    import uuid

    from engine.authoring.funnel_lookup import find_funnels
    from engine.cli.common import event_time
    from engine.core.definition import ManualTrigger
    from engine.core.own_events import MANUAL_ENROLL, OPERATOR, engine_id
    from engine.settings import get_settings
    from engine.store import leads as store

    settings = get_settings()
    # Entering a lead needs the funnel's logic only; templates are `funnel validate`'s business.
    loaded = find_funnels([funnel_ref], settings.funnels_dir, emails_dir=None)
    if loaded.errors or len(loaded.funnels) != 1:
        raise fail("\n".join(str(e) for e in loaded.errors) or f"{funnel_ref}: expected one funnel", 2)
    funnel = loaded.funnels[0]
    funnel_id = funnel.id
    if not any(isinstance(t, ManualTrigger) for t in funnel.entry.triggers):
        raise fail(f"funnel {funnel_id!r} takes no manual entry: add `- manual: true` to its entry triggers", 2)
    email = lead_address(email)
    now = datetime.now(UTC)
    when = event_time(at)
    with database(database_url, create=True) as engine, engine.begin() as conn:
        lead_id = store.find_lead_id(conn, email) or store.upsert_lead(conn, email, now=now)
        # Recorded as the operator's: the core takes a manual entry from no other source.
        event = store.NewEvent(
            engine_id("manual-enroll", uuid.uuid4().hex),
            lead_id,
            MANUAL_ENROLL,
            when,
            {"funnel": funnel_id, "by": by},
            OPERATOR,
        )
        store.record_events(conn, [event], now=now)
    say(Console(), f"recorded: {email} enters {funnel_id} on the engine's next tick (cause: manual ({by}))")


@lead_app.command("forget")
def lead_forget(
    email: str = typer.Argument(..., help="The lead's email address."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    database_url: str | None = typer.Option(None, "--database-url", help=DATABASE_HELP),
) -> None:
    """Erasure: delete the lead and every row about it. Only a hash of the address stays, on the
    suppression list, so it is never mailed again."""
    from engine.store import lead_data
    from engine.store import leads as store

    with database(database_url) as engine:
        with engine.connect() as conn:
            address = _known_address(conn, email)
            lead_id = store.find_lead_id(conn, address)
            counts = lead_data.held(conn, lead_id) if lead_id is not None else {}
        what = ", ".join(f"{n} {table}" for table, n in counts.items() if n) or "no lead with this address"
        if not yes and not typer.confirm(f"Erase {address} ({what})? This cannot be undone", default=False):
            raise fail("nothing erased")
        with engine.begin() as conn:
            erased = lead_data.erase(conn, address, datetime.now(UTC))
    console = Console()
    if erased is None:
        say(console, f"no lead {address}; its hash is on the suppression list, so it is never mailed")
        return
    rows = ", ".join(f"{n} {table}" for table, n in erased.items() if n)
    say(console, f"erased {address}: {rows}; only a hash of the address is kept, on the suppression list")


# --------------------------------------------------------------------------------------------------
# funnel watch
# --------------------------------------------------------------------------------------------------


def watch(
    funnel: str | None = typer.Option(None, "--funnel", help="Only this funnel (id)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
    from_start: bool = typer.Option(False, "--from-start", help="Begin with the history (default: from now on)."),
    once: bool = typer.Option(False, "--once", help="Print what there is, then stop."),
    seconds: float | None = typer.Option(None, "--for", min=0, help="Stop after this many seconds."),
    interval: float = typer.Option(0.5, "--interval", min=0.05, help="Seconds between looks at the database."),
    database_url: str | None = typer.Option(None, "--database-url", help=DATABASE_HELP),
) -> None:
    """A live feed: stage transitions (lead, funnel, from -> to, cause) and email outcomes as they happen.
    Ctrl-C stops."""
    from engine.store.database import connect_read_only
    from engine.store.report_queries import Feed

    feed = Feed(funnel, from_start)
    console = Console()
    deadline = None if seconds is None else time.monotonic() + seconds
    with database(database_url) as engine:
        try:
            while True:
                with connect_read_only(engine) as conn:
                    seen = feed.poll(conn)
                for item in seen:
                    if as_json:
                        typer.echo(json.dumps(_as_json(item)))
                    else:
                        say(console, _line(item))
                if once and not seen:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if not once:
                    time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
        except KeyboardInterrupt:
            return


def _line(item: TransitionSeen | EmailSeen) -> str:
    from engine.store.report_queries import TransitionSeen
    from engine.views.lead_timeline import OUTCOMES, describe_cause

    at = item.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(item, TransitionSeen):
        before = item.from_stage or "(enters)"
        after = item.to_stage or f"(exits: {item.exit_reason or 'exited'})"
        event = (item.event, item.properties) if item.event else None
        cause = describe_cause(item.cause_kind, item.cause_ref, event)
        return f"{at}  {item.lead}  {item.funnel}  {before} -> {after}  because {cause}"
    detail = f": {item.detail}" if item.detail else ""
    return f"{at}  {item.lead}  {item.funnel}  email {item.step} {OUTCOMES.get(item.status, item.status)}{detail}"


def _as_json(item: TransitionSeen | EmailSeen) -> dict[str, object]:
    from engine.store.report_queries import TransitionSeen

    common = {"id": item.id, "at": item.at.isoformat(), "lead": item.lead, "funnel": item.funnel}
    if isinstance(item, TransitionSeen):
        cause = {"kind": item.cause_kind, "ref": item.cause_ref, "event": item.event, "properties": item.properties}
        return {"type": "transition", **common, "from": item.from_stage, "to": item.to_stage,
                "exit_reason": item.exit_reason, "cause": cause}  # fmt: skip
    return {"type": "email", **common, "step": item.step, "template": item.template, "status": item.status,
            "detail": item.detail}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# funnel demo-month
# --------------------------------------------------------------------------------------------------


def demo_month(
    leads: int = typer.Option(2000, "--leads", "-n", min=1, help="How many made-up leads sign up."),
    days: int = typer.Option(30, "--days", "-d", min=1, help="Days of virtual time."),
    seed: int = typer.Option(0, "--seed", help="The same seed writes the same month."),
    start: str | None = typer.Option(None, "--start", help="First day (UTC date; default: --days before today)."),
    funnel: str = typer.Option("lead-magnet", "--funnel", help="Funnel id (in the funnels folder) or file."),
    database_url: str | None = typer.Option(None, "--database-url", help="Default: the configured database."),
) -> None:
    """Fill an empty database with a month of made-up leads going through a funnel: the real worker on a
    virtual clock, emails through the send pipeline's steps without SMTP (opens, clicks, purchases,
    unsubscribes, bounces drawn at random). For trying `funnel report`, `lead show` and `watch`."""
    from engine.authoring.funnel_lookup import find_funnels
    from engine.runtime import month
    from engine.settings import get_settings

    settings = get_settings()
    loaded = find_funnels([funnel], settings.funnels_dir, emails_dir=settings.emails_dir)
    found = loaded.funnels
    if loaded.errors or len(found) != 1:
        problems = "\n".join(str(e) for e in loaded.errors) or f"{funnel}: expected one funnel"
        raise fail(f"--funnel: {problems}\n(see `funnel validate`)", 2)
    if start is None:
        first = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days)
    else:
        first = _utc(start, "--start")
    with database(database_url, create=True) as engine:
        with engine.connect() as conn:
            if not month.is_empty(conn):
                raise fail("the database already has leads: demo-month only writes to an empty one (--database-url)")
        result = month.run(engine, found[0], settings, leads, days, first, seed)
    last = first + timedelta(days=days)
    say(
        Console(),
        f"{funnel}: {result.leads} leads signed up between {first:%Y-%m-%d} and {last:%Y-%m-%d}; "
        f"{result.events} events, {result.delivered} emails delivered, {result.bounced} bounced, "
        f"{result.unknown} unknown, {result.held_back} held back at send time; "
        f"{result.rounds} rounds in {result.elapsed_s:.1f} s. Next: `funnel report`.",
    )

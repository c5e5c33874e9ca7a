"""The events the engine records itself: their names, the shape of their ids and their sources. Pure.

An event from outside (`POST /v1/events`, `POST /hooks/{source}`, `funnel event`) may use none of them,
so that nobody can write what only the engine witnesses:

- a name in `RESERVED_NAMES`: an operator's act (`manual_enroll`), a lead's own opt-out
  (`unsubscribed`, `funnel_unsubscribed`), a change the engine made (`lead_updated`, `lead_imported`),
  an operator's decision on a message (`email_decided`), a complaint (`complained`), a lead's answer to
  an email at its signed reply address (`email_replied`), the journey putting the lead in an experiment's
  arm (`experiment_assigned`);
- an id of the form `<kind>:...` for a kind in `ID_KINDS`: the engine's ids are derived from what it
  saw (`form:<form>:<consent record>`, `click:<lead>:<funnel>:<step>:<link>`, ...), so an outside event
  holding one first would make the engine's own event a duplicate, dropped (a signup that never gets
  its report);
- a source in `SOURCES`: the core takes an event as an operator's act only when its source is
  `OPERATOR`, and a client must not be able to claim it.

Clicks and opens (`email_clicked`, `email_opened`) are not reserved names: other trackers witness them
too, and an API client may report them; only the engine's own ids for them are reserved. Funnels may
of course listen to any of these names.
"""

from __future__ import annotations

# Names.
MANUAL_ENROLL = "manual_enroll"  # an operator puts a lead in a funnel: {funnel: <id>, by: <who>}
FUNNEL_UNSUBSCRIBED = "funnel_unsubscribed"  # the lead left one funnel on its preference page: {funnel: <id>}
UNSUBSCRIBED = "unsubscribed"  # the lead opted out (its link, its preference page, or the API's PUT)
LEAD_UPDATED = "lead_updated"  # the lead's fields changed (`PUT /v1/leads`): condition triggers look again
LEAD_IMPORTED = "lead_imported"  # `funnel import --funnel`: {source: csv, funnel: <id>}
EMAIL_DECIDED = "email_decided"  # an operator decided what became of an `unknown` message
COMPLAINED = "complained"  # the lead reported an email as spam (a feedback report, a provider's event)
EMAIL_REPLIED = "email_replied"  # a person answered an email at its reply address: {funnel, step, message}
# The journey put the lead in an experiment's arm: {funnel, step, experiment, arm, template?, holdout?}
EXPERIMENT_ASSIGNED = "experiment_assigned"
RESERVED_NAMES = frozenset(
    {MANUAL_ENROLL, FUNNEL_UNSUBSCRIBED, UNSUBSCRIBED, LEAD_UPDATED, LEAD_IMPORTED, EMAIL_DECIDED, COMPLAINED,
     EMAIL_REPLIED, EXPERIMENT_ASSIGNED}
)  # fmt: skip

# Sources. `OPERATOR` is the `funnel lead` commands and the /ops dashboard.
OPERATOR = "ops"
ENGINE = "engine"  # what the journey itself records (experiment assignments)
SOURCES = frozenset({OPERATOR, "form", "import", "click", "open", "unsubscribe", "preferences", "demo", "complaint",
                     "reply", ENGINE})  # fmt: skip

# The kinds of the engine's event ids: every id the engine makes is `engine_id(kind, ...)`.
ID_KINDS = frozenset(
    {"form", "click", "open", "import", "manual-enroll", "lead-updated", "unsubscribe", "funnel-unsubscribe", "ops",
     "demo", "complaint", "reply", "experiment"}
)  # fmt: skip


def engine_id(kind: str, *parts: object) -> str:
    """An id for an event the engine records: `kind:part:part...`, in the namespace outside ids may not use."""
    if kind not in ID_KINDS:
        raise ValueError(f"event id kind {kind!r} is not one of the engine's ({', '.join(sorted(ID_KINDS))})")
    return ":".join((kind, *(str(p) for p in parts)))


def id_problem(event_id: str) -> str | None:
    """Why an event from outside may not carry this id, or None."""
    kind, colon, _ = event_id.partition(":")
    if colon and kind in ID_KINDS:
        return (
            f"{kind + ':'!r} is kept for the engine's own event ids ({', '.join(sorted(k + ':' for k in ID_KINDS))});"
            " use an id of your own, e.g. order-1042"
        )
    return None


def name_problem(name: str) -> str | None:
    """Why an event from outside may not carry this name, or None."""
    if name in RESERVED_NAMES:
        return (
            f"{name!r} is the name of an event the engine records itself ({', '.join(sorted(RESERVED_NAMES))});"
            " an operator enrolls with `funnel lead enroll`, consent changes go through PUT /v1/leads"
        )
    return None


def source_problem(source: str) -> str | None:
    """Why an event from outside may not claim this source, or None."""
    if source in SOURCES:
        return f"{source!r} is a source the engine keeps for itself ({', '.join(sorted(SOURCES))}); name your system"
    return None

"""Who may change a lead's consent, and how: what a form post does, when a double opt-in may be sent
or confirmed, how many confirmations a client may cause, and what an operator (the API, an import) may
set. Pure: the adapters read the state, ask here, and write what is decided.

The rule behind all of it (invariant 13): input nobody has proven changes no lead. A form post is a
request until the address's owner follows the link in the confirmation email; an opt-out is lifted
only by the lead's own confirmed action; a pending lead becomes subscribed only by its confirmation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from engine.core.definition import EventTrigger, Funnel
from engine.core.durations import in_words
from engine.core.localtime import is_zone

# The lead said no, or the address does not work: nothing but the lead's own confirmed action lifts it.
OPTED_OUT = ("unsubscribed", "bounced", "complained", "erased")
# Statuses a signup's confirmation does not lift, and for which a form post sends nothing: an erased
# address stays erased; a complaint is taken back only on the lead's own signed preference page, so no
# post by anyone sends a confirmation email to someone who reported our email as spam. A bounce is a
# state of the mailbox, not a choice: the owner's confirmation (which reached the mailbox) lifts it, and
# so may an operator (`lift_refusal`).
STICKY = ("complained", "erased")
# Opt-outs the lead may take back itself from its signed preference page.
RESTARTABLE = ("unsubscribed", "complained")
BOUNCED = "bounced"

# The field a signup page fills with the browser's time zone (a few lines of script): the lead's zone,
# not an attribute.
ZONE_FIELD = "timezone"
# A confirmation email is queued as funnel `form:<form id>`, step `confirm-<request id>`.
CONFIRM_FUNNEL_PREFIX = "form:"
CONFIRM_STEP_PREFIX = "confirm-"


@dataclass(frozen=True, slots=True)
class SignupOutcome:
    action: Literal["subscribe", "confirm", "ignore"]
    """`subscribe`: a new lead on a single opt-in form, subscribed with the post's fields at once.
    `confirm`: a confirmation email; what the post carried waits in the request until the owner
    confirms. `ignore`: nothing is written or sent."""
    new_status: str | None
    """The status a new lead is made with; None for an existing lead, of which nothing changes."""


def signup_outcome(current: str | None, double_opt_in: bool) -> SignupOutcome:
    """`current` is None for an address with no lead. Only a new address on a single opt-in form (the
    operator's choice) is subscribed at once. Any post about a lead that exists, whatever its status and
    whichever the form, only asks its owner to confirm: an unconfirmed post never touches a lead's
    fields, tags, score or consent, and never enters it in a funnel."""
    if current is None:
        return SignupOutcome("confirm", "pending") if double_opt_in else SignupOutcome("subscribe", "subscribed")
    if current in STICKY:
        return SignupOutcome("ignore", None)
    return SignupOutcome("confirm", None)


def confirmation_due(
    last_request_at: datetime | None, last_confirmed: bool, now: datetime, valid_for: timedelta
) -> bool:
    """A new confirmation email only when no earlier one is still waiting to be used: posting the form
    ten times (or a bot posting someone else's address) sends one email per validity period, not ten.
    A link already used does not hold the next signup back."""
    return last_request_at is None or last_confirmed or now - last_request_at > valid_for


@dataclass(frozen=True, slots=True)
class ConfirmationLimits:
    per_address: int
    per_ip: int
    window: timedelta


def confirmation_refusal(to_address: int, from_ip: int, limits: ConfirmationLimits) -> str | None:
    """None when one more confirmation email may go, else why not (for the log). `to_address`: the
    confirmations this address got within the window, from every form; `from_ip`: those the posting
    client caused."""
    hours = in_words(limits.window)
    if to_address >= limits.per_address:
        return f"{to_address} confirmations to this address in {hours} (limit {limits.per_address})"
    if from_ip >= limits.per_ip:
        return f"{from_ip} confirmations caused from this client in {hours} (limit {limits.per_ip})"
    return None


def confirmation_state(
    request_at: datetime, now: datetime, valid_for: timedelta, already_confirmed: bool
) -> Literal["confirm", "done", "expired"]:
    """A second click on a link already used is fine (`done`); a link past its validity is `expired`."""
    if already_confirmed:
        return "done"
    if now - request_at > valid_for:
        return "expired"
    return "confirm"


def status_after_confirming(current: str) -> str:
    """The owner confirmed: subscribed, lifting a pending signup, the owner's own unsubscribe or a
    bounce (the confirmation email reached the mailbox), but not a complaint."""
    return current if current in STICKY else "subscribed"


def may_confirm_to(suppression: str | None) -> bool:
    """Whether a double opt-in confirmation may go to an address on the suppression list for this
    reason: only a bounce, which the owner lifts by following its link. A complaint, an unsubscribe
    kept after erasure, an erasure: never."""
    return suppression is None or suppression == BOUNCED


def lift_refusal(consent: str | None, suppression: str | None) -> str | None:
    """Why an operator may not lift a bounce for an address whose lead has `consent` (None: no lead)
    and whose suppression has `suppression` as its reason (None: not suppressed), or None if it may."""
    if consent is None:
        return "no lead has this address (erased, or never a lead): there is nothing to lift"
    if "complained" in (consent, suppression):
        return "the lead complained (reported spam): a complaint is an opt-out, lifted only by the lead's own action"
    if "erased" in (consent, suppression):
        return "the address was erased: it is never mailed again"
    if suppression == "unsubscribed" or (consent == "unsubscribed" and suppression != BOUNCED):
        return "the lead unsubscribed: only the lead opts in again (the preference page, or a signup it confirms)"
    if BOUNCED not in (consent, suppression):
        return "the address is not bounced: there is nothing to lift"
    return None


def status_after_lift(consent: str, before_bounce: str | None) -> str:
    """The lead's consent once its bounce is lifted: a `bounced` status goes back to what it was before
    the bounce (subscribed when no record says: the address was taken as bouncing, not as declining);
    any other status stays (a lead that unsubscribed stays so)."""
    if consent != BOUNCED:
        return consent
    return before_bounce if before_bounce in ("subscribed", "pending", "unsubscribed") else "subscribed"


def operator_refusal(current: str | None, wanted: str) -> str | None:
    """Why an operator (the API, an import, a command) may not move a lead from `current` to `wanted`,
    or None if it may. An operator vouches for consent it collected elsewhere when it makes a lead; on an
    existing lead it can only make consent stricter."""
    if current is None or wanted == current:
        return None
    if current in OPTED_OUT and wanted not in OPTED_OUT:
        return f"the lead is {current}: only the lead can opt in again (the preference page, or a signup it confirms)"
    if current == "pending" and wanted == "subscribed":
        return "the lead has not confirmed its address: only its own confirmation (the link it was sent) subscribes it"
    return None


def may_restart(opted_out_from: str | None) -> bool:
    """Whether an unsubscribed lead may start again from its preference page. `opted_out_from` is the
    status it had when it unsubscribed (None when no record says: an imported opt-out). A lead that was
    only pending never confirmed its address: starting again is a new signup, confirmed by its link."""
    return opted_out_from in (None, "subscribed")


def act_name(after: str) -> Literal["given", "withdrawn"]:
    """How a consent record names a change of status an operator or the lead made."""
    return "given" if after == "subscribed" else "withdrawn"


def confirmation_key(form_id: str, request_id: int) -> tuple[str, str]:
    """(funnel id, step) of the confirmation email of one signup request in the outbox."""
    return f"{CONFIRM_FUNNEL_PREFIX}{form_id}", f"{CONFIRM_STEP_PREFIX}{request_id}"


def confirmation_of(funnel_id: str, step: str) -> tuple[str, int] | None:
    """(form id, request id) when an outbox row is a double opt-in confirmation, else None."""
    number = step.removeprefix(CONFIRM_STEP_PREFIX)
    ours = funnel_id.startswith(CONFIRM_FUNNEL_PREFIX) and step.startswith(CONFIRM_STEP_PREFIX)
    if ours and number.isascii() and number.isdigit():
        return funnel_id.removeprefix(CONFIRM_FUNNEL_PREFIX), int(number)
    return None


def with_zone(attributes: Mapping[str, Any], zone: str | None) -> dict[str, Any]:
    """A signup's fields as its consent record keeps them: the attributes, and the time zone the page
    read from the browser when it is an IANA name (anything else is left out: a browser that sent
    something odd is no reason to refuse the person signing up)."""
    return {**attributes, ZONE_FIELD: zone} if is_zone(zone) else dict(attributes)


def lead_fields(posted: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """What a signup's fields (`with_zone`, kept in its request until confirmed) give the lead: its
    attributes, and its time zone (checked again: the zone database may have changed meanwhile)."""
    attributes = {name: value for name, value in posted.items() if name != ZONE_FIELD}
    zone = posted.get(ZONE_FIELD)
    return attributes, zone if is_zone(zone) else None


def feeds(funnel: Funnel, form_id: str, event: str) -> bool:
    """Whether `funnel` enters leads on the form's `event` with `where: {form: <form_id>}` (or a list
    naming it): the funnel a form feeds, whose languages its page and confirmation email are in."""
    for trigger in funnel.entry.triggers:
        if isinstance(trigger, EventTrigger) and trigger.event == event:
            wanted = trigger.where.get("form")
            if wanted == form_id or (isinstance(wanted, list) and form_id in wanted):
                return True
    return False


def outbox_languages(funnels: Iterable[Funnel], form_events: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """The languages (default first) of each outbox funnel id in several languages: a funnel's own id,
    and `form:<id>` (a form's confirmation emails, `CONFIRM_FUNNEL_PREFIX`) in the languages of the first
    funnel with languages the form feeds (`form_events`: form id -> its event)."""
    found: dict[str, tuple[str, ...]] = {}
    listed = list(funnels)
    for funnel in listed:
        if funnel.languages is not None:
            found[funnel.id] = funnel.languages.declared
    for form_id, event in form_events.items():
        fed = next((f for f in listed if f.languages is not None and feeds(f, form_id, event)), None)
        if fed is not None and fed.languages is not None:
            found[f"{CONFIRM_FUNNEL_PREFIX}{form_id}"] = fed.languages.declared
    return found

"""From an outbox row to the exact bytes an SMTP server gets: the lead's template context, the rendered
template, the MIME message, the DKIM signature. No database, no network: it runs in the dispatcher's
process or in render processes beside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import formataddr
from html import escape
from pathlib import Path
from typing import Any

from engine.core import addresses, signup
from engine.core.outbox_item import OutboxItem
from engine.core.return_paths import return_path
from engine.mail.links import Links
from engine.mail.mime import build_mime, dkim_sign, load_dkim_key, senders
from engine.mail.templates import RenderedEmail, Sender, TemplateLibrary, lead_fields
from engine.settings import Settings


@dataclass(frozen=True, slots=True)
class Prepared:
    item: OutboxItem
    payload: bytes
    message_id: str
    rcpt: str  # the envelope recipient: the address in its ASCII form, as in the To header
    mail_from: str  # the envelope sender: the message's own return path with a bounce domain (`return_paths`)
    language: str | None = None  # the translation's language; None: the funnel has one language


@dataclass(frozen=True, slots=True)
class Failed:
    """A message that could not be composed (a template error): it fails alone."""

    item: OutboxItem
    error: str


def _with_pixel(html: str, url: str) -> str:
    """The open pixel just before `</body>` (or at the end): an image many clients load when the email is
    shown. Opens are a hint, not a fact (clients block or prefetch images), and are used as such."""
    pixel = f'<img src="{escape(url)}" width="1" height="1" alt="" style="display:block;border:0">'
    at = html.lower().rfind("</body>")
    return html[:at] + pixel + html[at:] if at >= 0 else html + pixel


def confirmation_of(item: OutboxItem) -> tuple[str, int] | None:
    """(form id, signup request id) when the item is a double opt-in confirmation, queued by a form post
    as funnel `form:<id>`, step `confirm-<request>`."""
    return signup.confirmation_of(item.funnel_id, item.step)


def message_id(item: OutboxItem, domain: str) -> str:
    """One Message-ID per (lead, funnel, step), the same on every retry."""
    digest = hashlib.sha256(f"{item.lead_id}:{item.funnel_id}:{item.step}".encode()).hexdigest()[:24]
    return f"<{digest}@{domain}>"


class Composer:
    def __init__(
        self,
        settings: Settings,
        templates: TemplateLibrary | Path,
        funnel_names: dict[str, str] | None = None,
        funnel_languages: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.templates = templates if isinstance(templates, TemplateLibrary) else TemplateLibrary(templates)
        self.funnel_names = funnel_names or {}
        # {funnel id: its languages, the default first} for the funnels that declare `languages:`.
        self.funnel_languages = {k: tuple(v) for k, v in (funnel_languages or {}).items() if v}
        self.links = Links(settings)
        s = settings.sender
        self.sender = Sender(s.name, s.postal_address, s.website)
        self.domain = s.address.rpartition("@")[2] or "localhost"
        dkim = settings.dkim
        self.dkim_key = load_dkim_key(dkim.private_key_file) if dkim.enabled and dkim.private_key_file else None

    def written(self, item: OutboxItem) -> tuple[str, str | None]:
        """(the template, its language) the item's lead reads: chosen from the lead's language as the row
        was read just now, so a language changed mid-funnel changes what is sent next. (template, None)
        for a funnel of one language."""
        languages = self.funnel_languages.get(item.funnel_id)
        if not languages:
            return item.template, None
        return self.templates.pick(item.template, item.language, languages)

    def context(self, item: OutboxItem, now: datetime | None = None) -> dict[str, Any]:
        languages = self.funnel_languages.get(item.funnel_id)
        lead = lead_fields(item.email, item.attributes, item.language)
        if item.timezone and "timezone" not in lead:
            lead["timezone"] = item.timezone  # what the date filters convert to
        context = {
            # The language the email is written in (the translation's, or the funnel's default): what
            # the layout's `lang`, its partials and the formatting filters follow.
            "email_language": self.written(item)[1] if languages else None,
            "lead": lead,
            # When the email is written (UTC), for dates in it: `{{ now | add_days(30) | format_date }}`.
            "now": now,
            "sender": self.sender,
            "funnel": {"id": item.funnel_id, "name": self.funnel_names.get(item.funnel_id, item.funnel_id)},
            "unsubscribe_url": self.links.unsubscribe_url(item.email, item.funnel_id),
            "preferences_url": self.links.preferences_url(item.email),
        }
        confirming = confirmation_of(item)
        if confirming is not None:
            form_id, request_id = confirming
            context["confirm_url"] = self.links.confirm_url(item.email, form_id, request_id)
        return context

    def render(self, item: OutboxItem, now: datetime) -> RenderedEmail:
        return self.templates.render(self.written(item)[0], self.context(item, now))

    def compose(
        self, item: OutboxItem, now: datetime, rendered: RenderedEmail | None = None, mid: str | None = None
    ) -> Prepared:
        """The exact bytes the server gets: headers, text and HTML parts, DKIM signature if configured.
        The Message-ID is the step's own (`message_id`) unless `mid` gives one (a test send). The
        recipient is the lead's address as the entries take it: a row stored before the address rules
        with a Unicode domain goes out in ASCII, one the rules refuse fails here, alone."""
        rcpt = addresses.normalise(item.email)
        template, language = self.written(item)
        context = self.context(item, now)
        if rendered is None:
            track = None
            if self.settings.track_clicks:

                def track(name: str, url: str) -> str:
                    return self.links.click_url(item.email, item.funnel_id, item.step, name, url)

            rendered = self.templates.render(template, context, track)
        html = rendered.html
        if self.settings.track_opens and item.funnel_id and item.step:
            html = _with_pixel(html, self.links.open_url(item.email, item.funnel_id, item.step))
        sender = self.settings.sender
        mid = mid or message_id(item, self.domain)
        unsubscribe = None
        if not item.transactional:
            unsubscribe = (context["unsubscribe_url"], f"mailto:{sender.address}?subject=unsubscribe")
        from_name, from_address = sender.name, sender.address
        if rendered.from_:
            (override,) = senders(rendered.from_)
            from_name, from_address = override[0] or sender.name, override[1]
        payload = build_mime(
            from_name=from_name,
            from_address=from_address,
            to=rcpt,
            subject=rendered.subject,
            date=now,
            message_id=mid,
            reply_to=self.reply_to(item, rendered, from_name),
            list_unsubscribe=unsubscribe,
            extra_headers=[("X-Funnel", f"{item.funnel_id}/{item.step}")],
            text=rendered.text,
            html=html,
        )
        dkim = self.settings.dkim
        if self.dkim_key is not None and dkim.selector and dkim.domain:
            payload = dkim_sign(payload, selector=dkim.selector, domain=dkim.domain, private_key=self.dkim_key)
        return Prepared(item, payload, mid, rcpt, self.mail_from(item), language)

    def reply_to(self, item: OutboxItem, rendered: RenderedEmail, name: str) -> str | None:
        """The template's own Reply-To wins (its author chose who answers that email); else, with a reply
        domain, the message's own reply address under the sender's name, the same on every retry; else
        `sender.reply_to`."""
        replies = self.settings.replies
        if rendered.reply_to or replies.domain is None or item.id < 1:
            return rendered.reply_to or self.settings.sender.reply_to
        key = self.settings.secret_key.get_secret_value()
        return formataddr((name, return_path(item.id, key, replies.local_part, replies.domain)))

    def mail_from(self, item: OutboxItem) -> str:
        """The envelope sender: with a bounce domain, one per message (its outbox row's, so every retry
        has the same one); else the sender's address. From and DKIM do not depend on it."""
        bounces = self.settings.bounces
        if bounces.domain is None or item.id < 1:
            return self.settings.sender.address
        return return_path(item.id, self.settings.secret_key.get_secret_value(), bounces.local_part, bounces.domain)

    def compose_many(self, items: list[OutboxItem], now: datetime) -> list[Prepared | Failed]:
        """Each item's message, or the error that stopped it (a broken template fails one email, not all)."""
        out: list[Prepared | Failed] = []
        for item in items:
            try:
                out.append(self.compose(item, now))
            except Exception as exc:
                out.append(Failed(item, f"{item.template}: {exc}"))
        return out

"""Settings from env vars (`FUNNEL_` prefix, `__` for nesting), a `.env` file and `config/funnel.toml`.

Precedence, highest first: init arguments, environment, `.env`, `config/funnel.toml`, defaults.
"""

from __future__ import annotations

from email.utils import getaddresses
from functools import lru_cache
from ipaddress import ip_address
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from engine.core import own_events, provider_events
from engine.core.ops_auth import OpsSettings
from engine.core.secret_keys import DEFAULT_SECRET_KEY, PUBLISHED, SigningSecret, key_problem
from engine.core.webhook_policy import WebhookSettings
from engine.core.webhook_targets import Targets


class SmtpSettings(BaseModel):
    """The relay. With no host, `funnel run` starts a local sink that writes `.eml` files."""

    host: str | None = None
    port: int = 587
    username: str | None = None
    password: SecretStr | None = None
    security: str = Field(default="starttls", pattern="^(none|starttls|ssl)$")
    ca_file: Path | None = Field(
        default=None, description="Trust this CA bundle for the relay's certificate (a private CA); else the system's."
    )
    timeout_s: float = 30.0
    connections: int = Field(default=4, ge=1, le=64, description="Concurrent SMTP connections per worker.")
    messages_per_connection: int = Field(
        default=100, ge=1, description="Reconnect after this many messages (many relays cap a session)."
    )
    rate_per_s: float = Field(default=50.0, gt=0, description="Messages per second, all domains together.")
    domain_rate_per_s: float | None = Field(
        default=None, gt=0, description="Default limit per recipient domain; unset: only the global limit."
    )
    domain_rates: dict[str, float] = Field(
        default_factory=dict, description='Per-domain limits, e.g. {"gmail.com" = 20}; they win over the default.'
    )


class DkimSettings(BaseModel):
    """DKIM signing: on when a selector, a domain and a key file are set."""

    selector: str | None = None
    domain: str | None = None
    private_key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.selector and self.domain and self.private_key_file)


class DeliverySettings(BaseModel):
    """Timing rules across all funnels, in each lead's own time zone. Transactional emails (a report the
    lead asked for, an opt-in confirmation) are exempt: they go out at once."""

    quiet_hours: str | None = Field(
        default=None,
        pattern=r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$",
        description='No marketing email in this local range, e.g. "21:00-08:00"; deferred to its end.',
    )
    max_per_day: int | None = Field(
        default=None, ge=1, description="Marketing emails per lead per local day, all funnels together."
    )
    default_timezone: str = Field(default="UTC", description="For leads with no time zone of their own.")


class SenderSettings(BaseModel):
    name: str = "Greenleaf Consulting"
    address: str = "hello@greenleaf.example"
    reply_to: str | None = None
    postal_address: str = "Greenleaf Consulting Ltd, 12 Orchard Row, Bristol BS1 4QA, United Kingdom"
    website: str = "https://greenleaf.example"


class DigestSettings(BaseModel):
    """The daily digest for ops (yesterday's transitions, conversions, bounces, unknown messages)."""

    to: list[str] = Field(default_factory=list, description="Recipients; none: no digest.")
    at: str = Field(default="08:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="Local time it goes.")
    timezone: str = Field(default="UTC", description="The zone of `at` and of the day the digest covers.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; expected an IANA name like Europe/London") from None
        return value


class BodyLimits(BaseModel):
    """The most bytes a request body may have, by kind of route; a longer one is refused with 413 before
    it is read (see `engine.http.request_bodies`)."""

    events: int = Field(
        default=4 << 20, gt=0, description="POST /v1/events and /hooks/*: a batch of up to 1,000 events."
    )
    api: int = Field(default=1 << 20, gt=0, description="The rest of /v1: a lead's attributes and tags.")
    forms: int = Field(
        default=64 << 10,
        gt=0,
        description="Every other route: signup forms, confirmation, unsubscribe and preference pages, the dashboard.",
    )


class HttpSettings(BaseModel):
    """The HTTP app (events API, unsubscribe, tracking). `funnel run` serves it beside the scheduler."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535, description="0: any free port.")
    body_limits: BodyLimits = BodyLimits()
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="How long an idle keep-alive connection stays open. Longer than the clients' and proxies' "
        "own (nginx's upstream keepalive_timeout and most HTTP clients: 60 s), so the client, never the server, "
        "closes an idle connection: a request sent on a connection the server is closing gets no answer.",
    )


class FormSettings(BaseModel):
    """A lead-magnet form: `GET /forms/{id}` shows its page, `POST /forms/{id}` takes an ordinary HTML form
    post (email, name, the consent box) and emits `event` with `{form: id, ...}` for the funnel's entry."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(default="form_submitted", pattern=r"^[a-z][a-z0-9_.-]{0,99}$")
    page: str | None = Field(default=None, description="Its signup page: a Jinja template under pages_dir.")
    consent_text: str = Field(
        default="Yes, send me the report and occasional emails about it. I can unsubscribe at any time.",
        description="What the consent box says; recorded by version with every signup.",
    )
    consent_version: str = Field(default="1", max_length=100)
    consent_required: bool = Field(default=True, description="Refuse a post without the consent box ticked.")
    double_opt_in: bool = False
    confirm_template: str = Field(
        default="forms/confirm-subscription", description="The confirmation email (transactional)."
    )
    confirm_within_hours: int = Field(default=72, ge=1, description="How long a confirmation link stays valid.")
    confirmations_per_address: int = Field(
        default=3,
        ge=1,
        description="Confirmation emails one address may get within limit_window_hours, from all forms together.",
    )
    confirmations_per_ip: int = Field(
        default=20,
        ge=1,
        description="Confirmation emails posts from one client IP may cause within limit_window_hours, all forms "
        "together. A post beyond either limit is logged and answered like any other, and sends nothing.",
    )
    limit_window_hours: int = Field(default=24, ge=1, description="The window the two limits above count in.")
    fields: list[str] = Field(
        default_factory=lambda: ["first_name", "company"],
        description="Other form fields kept as the lead's attributes; anything else is ignored.",
    )
    honeypot: str = Field(default="website", description="A field people never see: a bot that fills it is ignored.")
    redirect: str | None = Field(default=None, description="Where to go after the post; default: the app's own page.")
    confirmed_redirect: str | None = Field(default=None, description="Where to go after confirming (double opt-in).")


class HookSettings(BaseModel):
    """A system that posts signed webhooks to `POST /hooks/{name}` instead of using an API key."""

    secret: SigningSecret
    tolerance_s: int = Field(default=300, ge=1, le=3600, description="How old a signature's timestamp may be.")


class SesProvider(BaseModel):
    """Amazon SES events through an SNS topic that posts to `/hooks/bounces/ses` (raw message delivery off)."""

    model_config = ConfigDict(extra="forbid")

    topic_arns: list[str] = Field(
        min_length=1, description="The SNS topics whose messages are taken; a message from any other is refused."
    )
    trust_file: Path | None = Field(
        default=None,
        description="PEM file of CA certificates (a root and its intermediates) that must have issued the SNS "
        "signing certificate; unset: the certificate is trusted for having come over HTTPS from an SNS host.",
    )
    signing_certificates_file: Path | None = Field(
        default=None,
        description="PEM file of pinned SNS signing certificates: messages are checked against these only and "
        "no certificate is ever fetched (update the file when AWS rotates its certificate).",
    )
    confirm_subscriptions: bool = Field(
        default=False,
        description="Visit the SubscribeURL of a signed subscription confirmation for a listed topic; off: the "
        "URL is logged for an operator to visit.",
    )
    tolerance_s: int = Field(
        default=3600, ge=60, le=7 * 86400, description="How old a message's Timestamp may be (SNS retries keep it)."
    )


class SendgridProvider(BaseModel):
    """SendGrid's Signed Event Webhook, posting to `/hooks/bounces/sendgrid`."""

    model_config = ConfigDict(extra="forbid")

    public_key: str = Field(
        description="The verification key SendGrid shows for the signed webhook: base64 of the DER public key "
        "(ECDSA P-256), or the same in PEM."
    )
    tolerance_s: int = Field(
        default=90000,
        ge=60,
        le=7 * 86400,
        description="How far the signed timestamp may be from now; SendGrid retries a failed post for 24 hours.",
    )

    @field_validator("public_key")
    @classmethod
    def _p256_key(cls, value: str) -> str:
        problem = provider_events.sendgrid_key_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class PostmarkProvider(BaseModel):
    """Postmark's bounce and spam complaint webhooks, posting to `/hooks/bounces/postmark` with the basic
    auth credentials put in the webhook's URL (Postmark signs nothing)."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=200, pattern=r"^[^:\s]+$")
    password: SigningSecret


class MailgunProvider(BaseModel):
    """Mailgun's webhooks (failed, complained, delivered), posting to `/hooks/bounces/mailgun`."""

    model_config = ConfigDict(extra="forbid")

    signing_key: SecretStr = Field(description="The HTTP webhook signing key of the Mailgun account.")
    tolerance_s: int = Field(
        default=32400,
        ge=60,
        le=7 * 86400,
        description="How old a signature's timestamp may be; Mailgun retries a failed post for 8 hours.",
    )

    @field_validator("signing_key")
    @classmethod
    def _a_key_mailgun_made(cls, value: SecretStr) -> SecretStr:
        # Mailgun makes the key, so its length is Mailgun's (36 or 50 characters): only what cannot be one
        # is refused here, an empty value or an example from the docs among them.
        key = value.get_secret_value()
        if len(key) < 32 or not key.isascii() or any(c.isspace() for c in key) or key in PUBLISHED:
            raise ValueError("this is not a Mailgun signing key (32 or more characters, no spaces)")
        return value


class BounceProviders(BaseModel):
    """Providers whose bounce and complaint events come in by webhook; an unset one answers 404."""

    model_config = ConfigDict(extra="forbid")

    ses: SesProvider | None = None
    sendgrid: SendgridProvider | None = None
    postmark: PostmarkProvider | None = None
    mailgun: MailgunProvider | None = None


class BounceReceiverSettings(BaseModel):
    """The embedded LMTP receiver: an MTA's transport hands bounce-domain mail to it (postfix:
    `lmtp:inet:HOST:PORT` in a transport map). Off while `port` is unset."""

    host: str = Field(default="127.0.0.1", description="Where it listens; keep it on loopback or a private network.")
    port: int | None = Field(default=None, ge=0, le=65535, description="Unset: off. 0: any free port.")
    domains: list[str] = Field(
        default_factory=list,
        description="Recipient domains it accepts besides bounces.domain (a reply domain, a former bounce domain); "
        "any other recipient is refused with 550 5.1.1.",
    )
    max_message_bytes: int = Field(
        default=10 << 20, gt=0, description="Larger messages are refused with 552 5.3.4 (advertised as SIZE)."
    )


class BounceMailboxSettings(BaseModel):
    """A bounce mailbox the sender already has, read over IMAP with TLS (port 993) every `interval_s`.
    Only the messages the engine recognises as reports are moved (or deleted); the rest stay untouched,
    not even marked as read."""

    host: str | None = Field(default=None, description="The IMAP server; unset: no polling.")
    port: int = Field(default=993, ge=1, le=65535)
    username: str = ""
    password: SecretStr | None = None
    mailbox: str = Field(default="INBOX", description="The folder the reports arrive in.")
    ca_file: Path | None = Field(
        default=None, description="Trust this CA bundle for the server's certificate (a private CA); else the system's."
    )
    interval_s: float = Field(default=60.0, gt=0, description="Seconds between polls.")
    timeout_s: float = Field(default=30.0, gt=0, description="For the connection and each command.")
    on_taken: Literal["move", "delete"] = Field(
        default="move", description="What becomes of a message taken as a report: moved to move_to, or deleted."
    )
    move_to: str = Field(default="Processed", description="The folder taken reports go to; created if missing.")
    max_message_bytes: int = Field(
        default=10 << 20, gt=0, description="Larger messages are left in the mailbox, with a warning."
    )


class BounceSettings(BaseModel):
    """Reports that come back after the relay's 250: bounces, complaints, auto-replies."""

    domain: str | None = Field(
        default=None, description="The bounce domain: return paths are addresses there; unset: VERP is off."
    )
    local_part: str = Field(
        default="bounces",
        pattern=r"^[a-z0-9][a-z0-9._-]{0,29}$",
        description="The local part of return paths before +TOKEN, lowercase (some MTAs fold case).",
    )
    soft_limit: int = Field(
        default=3, ge=1, description="Soft bounces (a full mailbox, transient failures) that suppress an address..."
    )
    soft_window_days: int = Field(
        default=7, ge=1, description="...within this many days, with no open or click of the lead since the first."
    )
    sender_fault_alarm: int = Field(
        default=20, ge=1, description="Reports of the sender's fault from one receiving domain that raise the alarm..."
    )
    sender_fault_window_minutes: int = Field(default=60, ge=1, description="...within this many minutes.")
    pause_domain_on_alarm: bool = Field(
        default=False,
        description="While a domain's alarm is on, hold marketing email to it (deferred, sent after the alarm ends).",
    )
    receiver: BounceReceiverSettings = BounceReceiverSettings()
    providers: BounceProviders = BounceProviders()
    imap: BounceMailboxSettings = BounceMailboxSettings()


class ReplySettings(BaseModel):
    """Replies, when the sender routes its reply domain to the engine: each message's Reply-To is its own
    address there (`local_part+TOKEN@domain`); a person's answer becomes an `email_replied` event and is
    forwarded unchanged to the sender's inbox."""

    domain: str | None = Field(
        default=None,
        description="The reply domain (its MX hands its mail to the engine); unset: Reply-To is unchanged.",
    )
    local_part: str = Field(
        default="reply",
        pattern=r"^[a-z0-9][a-z0-9._-]{0,29}$",
        description="The local part of reply addresses before +TOKEN, lowercase (some MTAs fold case).",
    )
    forward: bool = Field(default=True, description="Forward what comes to the reply domain to forward_to.")
    forward_to: str | None = Field(
        default=None, description="The sender's real inbox; unset: sender.reply_to, else sender.address."
    )
    forward_from: str | None = Field(
        default=None, description="The forwards' envelope sender (where their bounces go); unset: sender.address."
    )
    forward_automatic: bool = Field(
        default=True, description="Forward auto-replies too (out of office); false: only recorded on the timeline."
    )


# Ids that go into URLs and database columns: short and plain.
FormId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,90}$")]
HookName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,99}$")]


class RetentionSettings(BaseModel):
    """How long each kind of record is kept (`engine.store.retention`). None keeps it for ever (the
    default: "retention: off" at start), so nothing is deleted until the operator chooses. What the
    engine needs to be right is kept whatever these say: see docs/operations.md, "Retention"."""

    events_days: int | None = Field(
        default=None,
        ge=7,
        description="Raw events (page views, opens, clicks, custom events). At least 7: an event's id is its "
        "sender's idempotency key, honoured while the event is kept, and senders retry for days.",
    )
    outbox_days: int | None = Field(
        default=None, ge=1, description="Emails sent, failed, bounced or skipped, with what they hold of the message."
    )
    transitions_days: int | None = Field(default=None, ge=1, description="Stage transitions with their causes.")
    webhook_deliveries_days: int | None = Field(
        default=None, ge=1, description="Outbound webhook deliveries that were sent or gave up."
    )
    forget_inactive_days: int | None = Field(
        default=None,
        ge=30,
        description="Erase leads who have left every funnel and done nothing for this long, as `funnel lead "
        "forget` does (the suppression hash stays). Off by default.",
    )
    every_minutes: int = Field(default=60, ge=1, description="How often `funnel run` prunes.")
    batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Rows per transaction: short locks, a bounded SQLite WAL."
    )

    @property
    def on(self) -> bool:
        return any(days is not None for days in self.ages().values()) or self.forget_inactive_days is not None

    def ages(self) -> dict[str, int | None]:
        return {
            "events": self.events_days,
            "outbox": self.outbox_days,
            "transitions": self.transitions_days,
            "webhook deliveries": self.webhook_deliveries_days,
        }

    def describe(self) -> str:
        """One line for the start and `funnel validate`: what is kept how long."""
        if not self.on:
            return "retention: off (nothing is deleted by age)"
        parts = [f"{kind} {days} d" for kind, days in self.ages().items() if days is not None]
        if self.forget_inactive_days is not None:
            parts.append(f"inactive leads forgotten after {self.forget_inactive_days} d")
        return "retention: " + ", ".join(parts) + "; the rest kept for ever"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FUNNEL_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        toml_file="config/funnel.toml",
    )

    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: a SQLite file in the data directory."
    )
    funnels_dir: Path = Path("funnels")
    emails_dir: Path = Path("emails")
    pages_dir: Path = Field(default=Path("pages"), description="Signup and thank-you pages (Jinja templates).")
    tick_seconds: float = Field(default=5.0, gt=0)
    batch_size: int = Field(default=500, ge=1)
    render_processes: int = Field(
        default=0,
        ge=0,
        le=32,
        description="Processes that compose emails beside the dispatcher; 0 composes in its own process. "
        "On a machine with spare cores, cores - 1 sends fastest.",
    )
    base_url: str = "http://127.0.0.1:8000"
    track_clicks: bool = Field(default=True, description="Wrap links made with link() in signed click redirects.")
    track_opens: bool = Field(default=True, description="Put a 1x1 open pixel at the end of every HTML part.")
    secret_key: SecretStr = Field(
        default=SecretStr(DEFAULT_SECRET_KEY),
        description="Signs every link in every email, and ops sessions; make one with `funnel secret`. The default "
        "is public: `funnel run` and `funnel api` refuse it, and any key shorter than 32 random bytes, unless the "
        "app and base_url are on loopback only.",
    )
    previous_secret_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Keys that secret_key replaced: links signed with them, in emails already delivered, "
        "still work. Drop a key once its emails are old enough to be ignored.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one object per line, for a log pipeline. Addresses and tokens are scrubbed."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_level_libraries: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING",
        description="For the libraries' loggers (uvicorn's access lines, httpx, apscheduler, aiosmtplib...): "
        "INFO shows each request served and each webhook sent, scrubbed like every line.",
    )
    smtp: SmtpSettings = SmtpSettings()
    http: HttpSettings = HttpSettings()
    dkim: DkimSettings = DkimSettings()
    delivery: DeliverySettings = DeliverySettings()
    sender: SenderSettings = SenderSettings()
    forms: dict[FormId, FormSettings] = Field(default_factory=dict, description="Lead-magnet forms by id.")
    webhooks: WebhookSettings = WebhookSettings()
    ops: OpsSettings = OpsSettings()
    digest: DigestSettings = DigestSettings()
    hooks: dict[HookName, HookSettings] = Field(
        default_factory=dict, description="Senders of signed inbound webhooks by name, each with its secret."
    )
    bounces: BounceSettings = BounceSettings()
    replies: ReplySettings = ReplySettings()
    retention: RetentionSettings = RetentionSettings()

    @model_validator(mode="after")
    def _replies_apart(self) -> Settings:
        replies = self.replies
        if replies.domain is None:
            return self
        domain = replies.domain.lower().rstrip(".")
        if domain == (self.bounces.domain or "").lower().rstrip(".") and replies.local_part == self.bounces.local_part:
            raise ValueError(
                f"replies.local_part {replies.local_part!r} is bounces.local_part on the same domain {domain}: "
                "replies and reports could not be told apart; choose another (e.g. reply)"
            )
        if replies.forward and self.forward_target.rpartition("@")[2].lower().rstrip(".") == domain:
            raise ValueError(
                f"replies.forward_to {self.forward_target} is at the reply domain {domain}: every forward would "
                "come back to the engine; set the sender's real inbox"
            )
        return self

    @property
    def forward_target(self) -> str:
        """Where replies are forwarded: the sender's real inbox (the first address of sender.reply_to)."""
        named = self.replies.forward_to or self.sender.reply_to or self.sender.address
        found = [address for _, address in getaddresses([named]) if "@" in address]
        return found[0] if found else self.sender.address

    @field_validator("hooks")
    @classmethod
    def _hooks_not_named_as_the_engine(cls, value: dict[str, HookSettings]) -> dict[str, HookSettings]:
        # A hook's name is the source of its events, and the engine's own sources mean the engine acted.
        for name in value:
            problem = own_events.source_problem(name)
            if problem is not None:
                raise ValueError(f"hooks.{name}: {problem}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            TomlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )

    @property
    def signing_keys(self) -> list[str]:
        """The secret key, then the previous ones: what signed links and return paths are read with."""
        return [k.get_secret_value() for k in (self.secret_key, *self.previous_secret_keys)]

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'funnel.db'}"

    def webhook_targets(self) -> Targets:
        """Where webhooks may go: the allowed private hosts, and the engine's own listeners (never)."""
        return Targets.of(self.webhooks.allow_private_hosts, self.base_url, self.http.host, self.http.port)

    def start_problems(self, serve_host: str | None = None) -> list[str]:
        """Why this configuration must not serve, one line each; empty: it may start. Beyond loopback every
        key of the keyring must be one nobody can guess (anyone could forge unsubscribe, click and opt-in
        links or ops sessions with it), and links must travel over HTTPS. On loopback only (the demo,
        development) nobody else can reach the app or follow its links, and nothing is refused."""
        exposed = [
            what
            for what, host in (
                ("http.host", serve_host or self.http.host),
                ("base_url", urlsplit(self.base_url).hostname or ""),
            )
            if not _is_loopback(host)
        ]
        if not exposed:
            return []
        reach = f"{' and '.join(exposed)} {'reach' if len(exposed) > 1 else 'reaches'} beyond this machine"
        keyring = [
            ("secret_key", self.secret_key),
            *((f"previous_secret_keys[{i}]", key) for i, key in enumerate(self.previous_secret_keys)),
        ]
        problems: list[str] = []
        for setting, key in keyring:
            problem = key_problem(key.get_secret_value())
            if problem is None:
                continue
            remedy = (
                "make a key with `funnel secret` and set it as FUNNEL_SECRET_KEY"
                if setting == "secret_key"
                else "remove it from FUNNEL_PREVIOUS_SECRET_KEYS (links signed with it stop working; "
                "new keys come from `funnel secret`)"
            )
            problems.append(f"{setting} {problem} while {reach}: {remedy}")
        if "base_url" in exposed and urlsplit(self.base_url).scheme != "https":
            # The links of every email are built on base_url: over http they travel in clear, tokens
            # included, and mailbox providers only honour one-click unsubscribe (RFC 8058) over HTTPS.
            problems.append(
                f"base_url is {self.base_url}, beyond this machine in clear: the links in emails would travel "
                "unencrypted and one-click unsubscribe (RFC 8058) needs HTTPS; expected an https:// address "
                "(TLS may end at a proxy in front of the app)"
            )
        return problems


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

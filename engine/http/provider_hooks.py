"""`POST /hooks/bounces/{provider}`: bounce and complaint events from Amazon SES (through SNS),
SendGrid, Postmark and Mailgun, proven as each provider proves its requests (`engine.provider_events`)
and handed as `Outcome`s to the app's recorder.

- A provider that is not configured under `bounces.providers` is 404.
- A request that is not the provider's own (no or a wrong signature, a certificate not trusted, an
  unlisted SNS topic, a timestamp outside the tolerance, wrong basic auth credentials) is 403 (401 with
  `WWW-Authenticate: Basic` for Postmark), and the answer says nothing about why; the log does.
- A proven request whose payload is not as the provider documents it is 400.
- A proven request already taken by this process (the same SNS MessageId, SendGrid timestamp and body,
  Mailgun token) is 409 and changes nothing. The memory is the process's own and lasts as long as the
  tolerance: beyond it, and across processes or restarts, a replay is harmless anyway, since every
  outcome carries the provider's event id as its `report_key` and the store takes a report once.
- The answer is 200 only once the recorder has returned: a recorder that fails (the database away)
  gives 503 or 500, and the provider sends the same request again.

The body is held to `http.body_limits.events`, as for every `/hooks/` route (`engine.request_bodies`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from engine.core import provider_events as events
from engine.core.bounce_outcome import Outcome
from engine.settings import BounceProviders, MailgunProvider, PostmarkProvider, SendgridProvider, SesProvider

log = logging.getLogger("engine.provider_hooks")

# What the app hands outcomes to: the store's writer, which takes them in one transaction or raises.
Record = Callable[[list[Outcome]], None]
# How a certificate or a subscription URL is fetched: the body of an HTTPS GET, or an error raised.
Fetch = Callable[[str], Awaitable[bytes]]

_CERTIFICATE_MAX = 64 << 10  # an SNS signing certificate is about 2 KB
_CERTIFICATES_KEPT = 16  # SNS signs with one certificate per region at a time
_REPLAYS_KEPT = 200_000  # a few MB at most, whatever a provider sends within the tolerance


class Taken(BaseModel):
    outcomes: int
    """How many outcomes (one per recipient of each event that says something about delivery) were
    handed to the engine; 0 for events it does not act on (opens, clicks) and SNS confirmations."""


def log_only(outcomes: list[Outcome]) -> None:
    """The recorder of an app that was given none: the outcomes are logged and nothing is recorded."""
    log.warning("%d bounce outcome(s) received, but no recorder is set: not recorded", len(outcomes))


class Replays:
    """The keys of requests taken lately, each kept until its time is up, at most `limit` of them (the
    oldest go first). A key is claimed before the outcomes are recorded and released if that fails, so
    two copies arriving together are not both taken and a failed one can be sent again."""

    def __init__(self, limit: int = _REPLAYS_KEPT) -> None:
        self.limit = limit
        self._until: OrderedDict[str, float] = OrderedDict()

    def claim(self, key: str, now: datetime, keep_s: float) -> bool:
        at = now.timestamp()
        while self._until and next(iter(self._until.values())) < at:
            self._until.popitem(last=False)
        expiry = self._until.get(key)
        if expiry is not None and expiry >= at:
            return False
        self._until[key] = at + keep_s
        self._until.move_to_end(key)
        while len(self._until) > self.limit:
            self._until.popitem(last=False)
        return True

    def release(self, key: str) -> None:
        self._until.pop(key, None)


class FetchFailed(Exception):
    """A certificate or a subscription URL could not be fetched now."""


async def https_get(url: str) -> bytes:
    """An HTTPS GET with the system's trust, no redirects, a short timeout and a bounded body."""
    async with (
        httpx.AsyncClient(timeout=10, follow_redirects=False) as client,
        client.stream("GET", url) as response,
    ):
        if response.status_code != 200:
            raise FetchFailed(f"{url} answered {response.status_code}")
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > _CERTIFICATE_MAX:
                raise FetchFailed(f"{url} sent more than {_CERTIFICATE_MAX} bytes")
        return body


def _certificates_in(setting: str, path: FilePath | None) -> list[x509.Certificate] | None:
    if path is None:
        return None
    try:
        found = events.load_certificates(path.read_bytes())
    except (OSError, events.Malformed) as problem:
        raise ValueError(f"bounces.providers.ses.{setting}: cannot read certificates from {path}: {problem}") from None
    return found


@dataclass
class SesCertificates:
    """Where the certificates that may have signed an SNS message come from: the pinned ones of the
    settings, else the one at the message's SigningCertURL (an SNS host, over HTTPS), kept by URL."""

    pinned: list[x509.Certificate] | None
    trust: list[x509.Certificate] | None
    fetch: Fetch
    _kept: OrderedDict[str, list[x509.Certificate]] = field(default_factory=OrderedDict)

    async def for_url(self, url: str) -> list[x509.Certificate]:
        if self.pinned is not None:
            return self.pinned
        if url in self._kept:
            return self._kept[url]
        try:
            found = events.load_certificates(await self.fetch(url))
        except (httpx.HTTPError, events.Malformed) as problem:
            raise FetchFailed(f"{url}: {problem}") from None
        self._kept[url] = found[:1]  # the signing certificate is the first; the rest would be its chain
        while len(self._kept) > _CERTIFICATES_KEPT:
            self._kept.popitem(last=False)
        return self._kept[url]


@dataclass
class ProviderHooks:
    """What the route needs, held in `app.state.provider_hooks`."""

    providers: BounceProviders
    now: Callable[[], datetime]
    record: Record
    ses_certificates: SesCertificates | None
    sendgrid_key: ec.EllipticCurvePublicKey | None
    fetch: Fetch
    replays: Replays = field(default_factory=Replays)

    @classmethod
    def of(
        cls, providers: BounceProviders, now: Callable[[], datetime], record: Record | None, fetch: Fetch = https_get
    ) -> ProviderHooks:
        """Reads the certificate files and the SendGrid key once; a file that cannot be read stops the
        app from starting, naming the setting."""
        ses = providers.ses
        certificates = (
            SesCertificates(
                _certificates_in("signing_certificates_file", ses.signing_certificates_file),
                _certificates_in("trust_file", ses.trust_file),
                fetch,
            )
            if ses is not None
            else None
        )
        key = events.sendgrid_public_key(providers.sendgrid.public_key) if providers.sendgrid is not None else None
        return cls(providers, now, record or log_only, certificates, key, fetch)


def install(app: FastAPI, hooks: ProviderHooks) -> None:
    app.state.provider_hooks = hooks


def _hooks(request: Request) -> ProviderHooks:
    hooks: ProviderHooks = request.app.state.provider_hooks
    return hooks


def _refuse(provider: str, refusal: events.Refusal) -> HTTPException:
    log.info("refused a %s bounce webhook: %s", provider, refusal.value)
    if refusal is events.Refusal.CREDENTIALS:
        return HTTPException(status_code=401, headers={"WWW-Authenticate": 'Basic realm="bounces"'})
    return HTTPException(status_code=403)


def _malformed(provider: str, problem: events.Malformed) -> HTTPException:
    log.info("a %s bounce webhook was not as documented: %s", provider, problem)
    return HTTPException(status_code=400, detail=f"not a {provider} event as documented: {problem}")


async def _take(
    hooks: ProviderHooks, provider: str, replay_key: str | None, keep_s: float, take: Callable[[], list[Outcome]]
) -> Taken:
    """Reads the outcomes (400 when the payload is not as documented) and hands them to the recorder,
    refusing a request taken already (409) and forgetting it again when recording fails."""
    try:
        outcomes = take()
    except events.Malformed as problem:
        raise _malformed(provider, problem) from None
    if replay_key is not None and not hooks.replays.claim(f"{provider}:{replay_key}", hooks.now(), keep_s):
        log.info("refused a %s bounce webhook: already received", provider)
        raise HTTPException(status_code=409, detail="already received")
    try:
        if outcomes:
            await run_in_threadpool(hooks.record, outcomes)
    except BaseException:
        if replay_key is not None:
            hooks.replays.release(f"{provider}:{replay_key}")
        raise
    return Taken(outcomes=len(outcomes))


async def _ses(hooks: ProviderHooks, settings: SesProvider, request: Request) -> Taken:
    body = await request.body()
    try:
        message = events.read_sns(body)
    except events.Malformed as problem:
        raise _malformed("ses", problem) from None
    if not events.sns_certificate_url_ok(message.signing_cert_url):
        raise _refuse("ses", events.Refusal.CERTIFICATE_URL)
    assert hooks.ses_certificates is not None  # set whenever the provider is
    try:
        candidates = await hooks.ses_certificates.for_url(message.signing_cert_url)
    except FetchFailed as problem:
        log.warning("cannot fetch the SNS signing certificate: %s", problem)
        raise HTTPException(status_code=503, detail="try again later", headers={"Retry-After": "60"}) from None
    trust = hooks.ses_certificates.trust
    refusal = events.verify_sns(message, candidates, trust, settings.topic_arns, hooks.now(), settings.tolerance_s)
    if refusal is not None:
        raise _refuse("ses", refusal)
    if message.type == "Notification":
        return await _take(
            hooks,
            "ses",
            message.message_id,
            2 * settings.tolerance_s,
            lambda: events.ses_outcomes(message.message, message.message_id),
        )
    await _confirmation(hooks, settings, message)
    return Taken(outcomes=0)


async def _confirmation(hooks: ProviderHooks, settings: SesProvider, message: events.SnsMessage) -> None:
    url = message.subscribe_url or ""
    if message.type == "UnsubscribeConfirmation":
        log.warning("SNS says topic %s no longer posts bounces here; to subscribe again: %s", message.topic_arn, url)
        return
    if not settings.confirm_subscriptions or not events.sns_subscribe_url_ok(url):
        log.warning("SNS asks to confirm the subscription to %s: visit %s", message.topic_arn, url)
        return
    try:
        await hooks.fetch(url)
    except (httpx.HTTPError, FetchFailed) as problem:
        log.warning("could not confirm the subscription to %s (%s): visit %s", message.topic_arn, problem, url)
        raise HTTPException(status_code=503, detail="try again later", headers={"Retry-After": "60"}) from None
    log.info("confirmed the SNS subscription to %s", message.topic_arn)


async def _sendgrid(hooks: ProviderHooks, settings: SendgridProvider, request: Request) -> Taken:
    signature = request.headers.get(events.SENDGRID_SIGNATURE)
    timestamp = request.headers.get(events.SENDGRID_TIMESTAMP)
    if not signature or not timestamp:
        raise _refuse("sendgrid", events.Refusal.UNSIGNED)  # before the body is read
    body = await request.body()
    assert hooks.sendgrid_key is not None  # set whenever the provider is
    refusal = events.verify_sendgrid(hooks.sendgrid_key, signature, timestamp, body, hooks.now(), settings.tolerance_s)
    if refusal is not None:
        raise _refuse("sendgrid", refusal)
    # The signed bytes, not the signature: an ECDSA signature has a second valid form anyone can compute.
    key = hashlib.sha256(timestamp.encode() + body).hexdigest()
    return await _take(hooks, "sendgrid", key, 2 * settings.tolerance_s, lambda: events.sendgrid_outcomes(body))


async def _postmark(hooks: ProviderHooks, settings: PostmarkProvider, request: Request) -> Taken:
    password = settings.password.get_secret_value()
    if not events.postmark_authorized(request.headers.get("Authorization"), settings.username, password):
        raise _refuse("postmark", events.Refusal.CREDENTIALS)  # before the body is read
    body = await request.body()
    # Postmark signs nothing and has no timestamp to hold: a replay is a copy of a report taken once.
    return await _take(hooks, "postmark", None, 0, lambda: events.postmark_outcomes(body))


async def _mailgun(hooks: ProviderHooks, settings: MailgunProvider, request: Request) -> Taken:
    body = await request.body()
    try:
        signature, event = events.read_mailgun(body)
    except events.Malformed as problem:
        raise _malformed("mailgun", problem) from None
    key = settings.signing_key.get_secret_value()
    refusal = events.verify_mailgun(key, signature, hooks.now(), settings.tolerance_s)
    if refusal is not None:
        raise _refuse("mailgun", refusal)
    return await _take(
        hooks, "mailgun", signature.token, 2 * settings.tolerance_s, lambda: events.mailgun_outcomes(event)
    )


router = APIRouter()


@router.post(
    "/hooks/bounces/{provider}",
    response_model=Taken,
    tags=["hooks"],
    responses={
        400: {"description": "The provider's request, but its payload is not as the provider documents it."},
        401: {"description": "Postmark: no or wrong basic auth credentials."},
        403: {"description": "Not the provider's own request: signature, certificate, topic or timestamp."},
        404: {"description": "No such provider configured under bounces.providers."},
        409: {"description": "This request was already received: nothing changed."},
        503: {"description": "The engine cannot take it now (database, SNS certificate): send it again later."},
    },
)
async def receive(
    provider: Annotated[str, Path(description="ses, sendgrid, postmark or mailgun, as configured.")],
    request: Request,
    hooks: Annotated[ProviderHooks, Depends(_hooks)],
) -> Taken:
    """A provider's event post, as the provider sends it (docs/bounces.md, "Provider webhooks"): the
    bounces, complaints and deliveries in it become outcomes for the engine; opens, clicks and the
    rest are acknowledged and ignored. Answered after the engine took them."""
    settings: Any = getattr(hooks.providers, provider, None) if provider in events.PROVIDERS else None
    if settings is None:
        raise HTTPException(status_code=404, detail="no such bounce provider configured")
    if isinstance(settings, SesProvider):
        return await _ses(hooks, settings, request)
    if isinstance(settings, SendgridProvider):
        return await _sendgrid(hooks, settings, request)
    if isinstance(settings, PostmarkProvider):
        return await _postmark(hooks, settings, request)
    return await _mailgun(hooks, settings, request)

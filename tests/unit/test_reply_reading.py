"""Replies, read and composed: the Reply-To of a message names its outbox row with the return path's
signed token when a reply domain is set, and stays as it was without one; mail to the reply domain is
read as a reply (a person's or a machine's), everything else is left to the report reader."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default
from email.utils import getaddresses
from pathlib import Path

import pytest

from engine.core.outbox_item import OutboxItem
from engine.core.replies import read_reply
from engine.core.return_paths import read_token, return_path
from engine.mail.composer import Composer
from engine.settings import Settings
from tests.acceptance.conftest import write_emails

KEY = "k" * 43
NOW = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


def item(outbox_id: int = 7, template: str = "drip/welcome") -> OutboxItem:
    return OutboxItem(
        outbox_id, 3, "ana@example.com", "subscribed", {}, "drip", "welcome", template, "inquiry", False, 0, False
    )


def reply_to_of(settings: Settings, emails: Path, it: OutboxItem) -> list[tuple[str, str]]:
    payload = Composer(settings, emails).compose(it, NOW).payload
    message = message_from_bytes(payload, policy=default)
    return getaddresses([str(message["Reply-To"])]) if message["Reply-To"] else []


@pytest.fixture
def emails(tmp_path: Path) -> Path:
    folder = write_emails(tmp_path, ["welcome"])
    (folder / "drip" / "personal.md").write_text('---\nsubject: "From Ann"\nreply_to: ann@shop.test\n---\nHi.\n')
    return folder


def settings(**replies: str) -> Settings:
    return Settings(
        secret_key=KEY,
        sender={"name": "Greenleaf, Ltd", "address": "hello@shop.test", "reply_to": "desk@shop.test"},
        replies=replies,
        track_opens=False,
    )


def test_without_a_reply_domain_the_reply_to_is_the_senders_setting(emails: Path) -> None:
    assert reply_to_of(settings(), emails, item()) == [("", "desk@shop.test")]


def test_with_a_reply_domain_each_message_answers_to_its_own_signed_address(emails: Path) -> None:
    chosen = settings(domain="reply.shop.test")
    [(name, address)] = reply_to_of(chosen, emails, item(7))
    assert name == "Greenleaf, Ltd"  # the lead sees the sender, not an odd address
    assert address == return_path(7, KEY, "reply", "reply.shop.test")
    local, _, domain = address.partition("@")
    assert read_token(local.partition("+")[2], [KEY]) == 7 and domain == "reply.shop.test"
    assert reply_to_of(chosen, emails, item(7)) == [(name, address)]  # a retry: the same address
    assert reply_to_of(chosen, emails, item(8))[0][1] != address
    # The return path stays the bounce domain's business: no bounce domain, the sender's address.
    assert Composer(chosen, emails).compose(item(7), NOW).mail_from == "hello@shop.test"


def test_a_templates_own_reply_to_wins_over_the_reply_domain(emails: Path) -> None:
    assert reply_to_of(settings(domain="reply.shop.test"), emails, item(7, "drip/personal")) == [("", "ann@shop.test")]


REPLY = (
    'From: Ana <ana@example.com>\r\nTo: "Greenleaf, Ltd" <{to}>\r\nSubject: Re: Welcome\r\n'
    "Message-ID: <r1@example.com>\r\nIn-Reply-To: <x@shop.test>\r\n\r\nYes, call me tomorrow.\r\n"
)


def test_a_persons_reply_names_its_message_and_has_a_stable_key() -> None:
    address = return_path(7, KEY, "reply", "reply.shop.test")
    reply = read_reply(REPLY.format(to=address).encode(), "reply", "reply.shop.test")
    assert reply is not None and reply.automatic is None
    assert reply.token is not None and read_token(reply.token, [KEY]) == 7
    lmtp = f"Return-Path: <ana@example.com>\r\nDelivered-To: {address}\r\n" + REPLY.format(to=address)
    again = read_reply(lmtp.encode(), "reply", "reply.shop.test")
    assert again is not None and again.key == reply.key  # the same reply by another way in: one key


@pytest.mark.parametrize(
    "headers",
    [
        "Auto-Submitted: auto-replied\r\n",
        "X-Autoreply: yes\r\n",
        "Precedence: auto_reply\r\n",
        "Return-Path: <>\r\n",
    ],
)
def test_a_machines_answer_is_automatic(headers: str) -> None:
    address = return_path(7, KEY, "reply", "reply.shop.test")
    reply = read_reply((headers + REPLY.format(to=address)).encode(), "reply", "reply.shop.test")
    assert reply is not None and reply.automatic


def test_out_of_office_subjects_are_automatic_but_a_person_quoting_one_is_not() -> None:
    address = return_path(7, KEY, "reply", "reply.shop.test")
    text = REPLY.format(to=address)
    ooo = read_reply(text.replace("Re: Welcome", "Automatic reply: Welcome").encode(), "reply", "reply.shop.test")
    person = read_reply(
        text.replace("Re: Welcome", "Re: Out of office next week?").encode(), "reply", "reply.shop.test"
    )
    assert ooo is not None and ooo.automatic and person is not None and person.automatic is None


def test_mail_elsewhere_is_no_reply_and_mail_to_a_return_path_is_a_report() -> None:
    address = return_path(7, KEY, "reply", "reply.shop.test")
    assert read_reply(REPLY.format(to="someone@else.test").encode(), "reply", "reply.shop.test") is None
    # A report to the return path that carries the reply address in its headers is a report.
    report = f"Delivered-To: bounces+abc@bounce.shop.test\r\n{REPLY.format(to=address)}"
    assert read_reply(report.encode(), "reply", "reply.shop.test") is None
    # A mailbox a catch-all fills names itself in the envelope: the To names the reply address.
    caught = read_reply(
        f"Delivered-To: desk@mail.test\r\n{REPLY.format(to=address)}".encode(), "reply", "reply.shop.test"
    )
    assert caught is not None and caught.address == address


def test_a_forged_token_is_read_but_names_no_message() -> None:
    reply = read_reply(REPLY.format(to="reply+7aaaaaaaaaaaa@reply.shop.test").encode(), "reply", "reply.shop.test")
    assert reply is not None and reply.token == "7aaaaaaaaaaaa"
    assert read_token(reply.token, [KEY]) is None
    bare = read_reply(REPLY.format(to="reply@reply.shop.test").encode(), "reply", "reply.shop.test")
    assert bare is not None and bare.token is None


def test_settings_refuse_a_reply_address_that_cannot_be_told_from_a_bounce_or_forwards_to_itself() -> None:
    with pytest.raises(ValueError, match=re.escape("replies.local_part 'bounces' is bounces.local_part")):
        Settings(bounces={"domain": "x.test"}, replies={"domain": "x.test", "local_part": "bounces"})
    with pytest.raises(ValueError, match=re.escape("replies.forward_to me@x.test is at the reply domain x.test")):
        Settings(replies={"domain": "x.test", "forward_to": "me@x.test"})
    assert Settings(replies={"domain": "x.test"}, sender={"reply_to": "Ann <ann@shop.test>"}).forward_target == (
        "ann@shop.test"
    )

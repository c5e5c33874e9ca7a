"""The final bytes of an email: headers and a multipart/alternative body written directly, then DKIM.

`email.message.EmailMessage` costs milliseconds per message; this writes the same message (tests/unit/test_mime.py
proves it decodes to the same headers and parts) in under a tenth of a millisecond. Everything it emits is ASCII
with CRLF line endings: bodies are always quoted-printable, non-ASCII header text becomes RFC 2047 encoded-words.

Line breaks in header values (invariant 10): free text (the subject, a display name, extra header values) is what
templates and lead data produce, and a line break there carries no meaning, so it is collapsed to one space, as the
templates already do for subjects; the email goes out. Addresses, the Message-ID and URLs have no sensible one-line
form once broken, so a line break there is a ValueError. Either way no value can start a header line of its own.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Sequence
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.utils import format_datetime
from functools import lru_cache
from pathlib import Path
from typing import cast

import dkim  # type: ignore[import-untyped]
import dkim.crypto  # type: ignore[import-untyped]

CRLF = "\r\n"
FOLD_AT = 78  # RFC 5322 2.1.1: SHOULD
LINE_LIMIT = 998  # RFC 5322 2.1.1: MUST
_EW_LIMIT = 75  # RFC 2047 2: longest encoded-word
_EW_OVERHEAD = len("=?utf-8?b??=")

# What `str.splitlines` breaks on: the email package refuses all of them in a header value.
_LINE_BREAK = re.compile(r"[ \t]*(?:(?:\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029])[ \t]*)+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PHRASE_SPECIALS = re.compile(r'[][\\()<>@,:;".]')  # as email.utils.formataddr: these need a quoted string
_QUOTE_ESCAPES = re.compile(r'[\\"]')
_FOLD_SEGMENT = re.compile(r"[ \t]*[^ \t]+")
_DOT_ATOM_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9.-]+")
_MSG_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")
_URL = re.compile(r"[!-;=?-~]+")  # printable ASCII but '<' and '>'
_QP_OVERLONG = re.compile(rb"(?m)^(.{74,75})(=20|=09)$")
_FIELD_NAME = re.compile(r"[!-9;-~]+")

ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058
SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
_OWN_HEADERS = frozenset(SIGNED_HEADERS) | {"content-transfer-encoding", "dkim-signature"}
_REGISTRY = HeaderRegistry()


def build_mime(
    *,
    from_name: str,
    from_address: str,
    to: str,
    subject: str,
    date: datetime,
    message_id: str,
    reply_to: str | None,
    list_unsubscribe: tuple[str, str] | None,
    extra_headers: Sequence[tuple[str, str]],
    text: str,
    html: str,
) -> bytes:
    """The message as sent: `list_unsubscribe` is (https URL, mailto URL); `to` and `reply_to` are address lists
    ("a@b.c" or "Name <a@b.c>, ..."). Raises ValueError for a header that cannot be written safely."""
    sender = senders(from_address)
    if len(sender) != 1 or sender[0][0]:
        raise ValueError(f"from_address {from_address!r}: expected one bare address such as news@example.com")
    headers = [
        _address_field("From", ((from_name, sender[0][1]),)),
        _address_field("To", mailboxes(to)),
        _unstructured("Subject", subject),
        f"Date: {format_datetime(date)}{CRLF}",
        f"Message-ID: {_message_id(message_id)}{CRLF}",
    ]
    if reply_to:
        headers.append(_address_field("Reply-To", senders(reply_to)))
    if list_unsubscribe is not None:
        headers.append(_list_unsubscribe(*list_unsubscribe))
        headers.append(f"List-Unsubscribe-Post: {ONE_CLICK}{CRLF}")
    for name, value in extra_headers:
        if not _FIELD_NAME.fullmatch(name) or name.lower() in _OWN_HEADERS:
            raise ValueError(f"extra header {name!r}: not a field name, or one this module writes itself")
        headers.append(_unstructured(name, value))
    # '=' followed by '_' never occurs in quoted-printable, so this boundary cannot occur in a body; hashing the
    # Message-ID makes a retry byte-identical.
    boundary = "=_" + hashlib.blake2b(message_id.encode(), digest_size=12).hexdigest()
    headers.append(f'MIME-Version: 1.0{CRLF}Content-Type: multipart/alternative; boundary="{boundary}"{CRLF}')
    part = f'{CRLF}--{boundary}{CRLF}Content-Type: text/%s; charset="utf-8"{CRLF}'
    part += f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}"
    return b"".join(
        (
            "".join(headers).encode("ascii"),
            (part % "plain").encode("ascii"),
            _quoted_printable(text),
            (part % "html").encode("ascii"),
            _quoted_printable(html),
            f"{CRLF}--{boundary}--{CRLF}".encode("ascii"),
        )
    )


# --------------------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------------------


def _quoted_printable(text: str) -> bytes:
    """Lines end in CRLF, and the text in one line break, as `EmailMessage.set_content` normalises them."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    # b2a_qp encodes trailing whitespace, a lone '.', controls and '=', and soft-breaks lines at 76.
    data = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    if " \n" in text or "\t\n" in text:
        # b2a_qp encodes a line's trailing blank after choosing where to break, making that line 77 or 78 long.
        data = _QP_OVERLONG.sub(rb"\1=\n\2", data)
    if b"From " in data:  # an mbox on the way would otherwise add '>' in front
        data = re.sub(rb"(?m)^From ", b"=46rom ", data)
    return data.replace(b"\n", b"\r\n")


# --------------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------------


def _one_line(value: str) -> str:
    if _LINE_BREAK.search(value):
        value = _LINE_BREAK.sub(" ", value)
    return value.strip(" \t")


def _plain(value: str) -> bool:
    """Whether the value can go out as it is: '=?' would read as the start of an encoded-word."""
    return value.isascii() and not _CONTROL.search(value) and "=?" not in value


def _unstructured(name: str, value: str) -> str:
    value = _one_line(value)
    if _plain(value):
        folded = _fold(f"{name}: {value}")
        if folded is not None:
            return folded
    words = _encoded_words(value, FOLD_AT - len(name) - 2)
    return f"{name}: " + (CRLF + " ").join(words) + CRLF


def _fold(line: str) -> str | None:
    """The line folded before whitespace to at most 78 octets where it can be; None if a word is so long
    that a line would pass the 998-octet limit."""
    if len(line) <= FOLD_AT:
        return line + CRLF
    segments = _FOLD_SEGMENT.findall(line)
    lines: list[str] = []
    # The field name keeps its first word: a break right after the colon reads back as a leading space.
    current = "".join(segments[:2])
    for segment in segments[2:]:
        if len(current) + len(segment) <= FOLD_AT:
            current += segment
        else:
            lines.append(current)
            current = segment
    lines.append(current)
    if any(len(x) > LINE_LIMIT for x in lines):
        return None
    return CRLF.join(lines) + CRLF


def _encoded_words(value: str, first_room: int) -> list[str]:
    """RFC 2047 B encoded-words cut at character boundaries: the first fits in `first_room` octets, the others on
    a continuation line. Decoders join adjacent encoded-words, so spaces travel inside them."""
    data = value.encode("utf-8")
    words: list[str] = []
    room = min(first_room, _EW_LIMIT)
    if room < _EW_OVERHEAD + 8:  # too little for a 4-octet character: start on the next line
        words.append("")
        room = _EW_LIMIT
    start = 0
    while start < len(data) or not words:
        end = min(start + (room - _EW_OVERHEAD) // 4 * 3, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # not inside a UTF-8 sequence
            end -= 1
        words.append("=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False).decode("ascii") + "?=")
        start = end
        room = _EW_LIMIT
    return words


def _phrase(name: str, room: int, encode: bool) -> str:
    """A display name as `email.utils.formataddr` writes it: as is, quoted, or encoded."""
    name = _one_line(name)
    if not encode and _plain(name):
        if _PHRASE_SPECIALS.search(name):
            return '"' + _QUOTE_ESCAPES.sub(r"\\\g<0>", name) + '"'
        return name
    return " ".join(_encoded_words(name, room))


def _address_field(name: str, mailboxes: Sequence[tuple[str, str]]) -> str:
    # Encoded-words can be cut anywhere: the way out when a plain display name holds a word too long for a line.
    for encode in (False, True):
        room = FOLD_AT - len(name) - 2
        parts = []
        for display, address in mailboxes:
            phrase = _phrase(display, room, encode)
            parts.append(f"{phrase} <{address}>" if phrase else address)
            room = FOLD_AT - 1
        folded = _fold(f"{name}: " + ", ".join(parts))
        if folded is not None:
            return folded
    raise ValueError(f"{name}: an address longer than a line")


@lru_cache(maxsize=256)
def senders(value: str) -> tuple[tuple[str, str], ...]:
    """`mailboxes`, cached: the few From and Reply-To values repeat in every message. Recipients do not
    go through it: a cache of every address mailed would only fill up."""
    return mailboxes(value)


def mailboxes(value: str) -> tuple[tuple[str, str], ...]:
    """(display name, ASCII addr-spec) for each address."""
    if _LINE_BREAK.search(value):
        raise ValueError(f"address {value!r}: contains a line break")
    value = value.strip()
    if _DOT_ATOM_ADDRESS.fullmatch(value):
        return (("", value),)
    try:
        header = _REGISTRY("to", value)
    except (HeaderParseError, IndexError, ValueError):  # the parser's own bugs on some inputs included
        raise ValueError(f"address {value!r}: expected local-part@domain or Name <local-part@domain>") from None
    addresses = cast(AddressHeader, header).addresses
    for address in addresses:
        if address.domain and not address.username.isascii():
            raise ValueError(f"address {value!r}: a non-ASCII local part needs SMTPUTF8, which we do not use")
    if header.defects or not addresses:
        reason = header.defects[0] if header.defects else "no address"
        raise ValueError(f"address {value!r}: {reason}")
    return tuple((address.display_name, _ascii_address(address, value)) for address in addresses)


def _ascii_address(address: Address, value: str) -> str:
    if not address.domain or _CONTROL.search(address.addr_spec):
        raise ValueError(f"address {value!r}: expected local-part@domain")
    domain = address.domain
    if not domain.isascii():
        # The stdlib codec is IDNA 2003, which maps some names (ß -> ss) to another domain: refuse those.
        try:
            ace = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"address {value!r}: domain is not a valid IDN ({exc})") from None
        if ace.encode("ascii").decode("idna") != domain.lower():
            raise ValueError(f"address {value!r}: domain {domain!r} has no exact ASCII form")
        domain = ace
    return str(Address(username=address.username, domain=domain))


def _message_id(value: str) -> str:
    if not _MSG_ID.fullmatch(value):
        raise ValueError(f"Message-ID {value!r}: expected <unique@domain> in printable ASCII")
    return value


def _list_unsubscribe(https: str, mailto: str) -> str:
    for url, scheme in ((https, ("https://", "http://")), (mailto, ("mailto:",))):
        if not _URL.fullmatch(url) or not url.startswith(scheme) or len(url) > LINE_LIMIT - 4:
            raise ValueError(f"List-Unsubscribe URL {url!r}: expected a {scheme[0]} URL in printable ASCII")
    line = f"List-Unsubscribe: <{https}>, <{mailto}>"
    if len(line) <= FOLD_AT:
        return line + CRLF
    return f"List-Unsubscribe: <{https}>,{CRLF} <{mailto}>{CRLF}"


# --------------------------------------------------------------------------------------------------
# DKIM
# --------------------------------------------------------------------------------------------------


class DkimKeyError(ValueError):
    pass


def load_dkim_key(path: Path | str) -> bytes:
    """The PEM RSA private key (PKCS#1 or PKCS#8) in `path`; a DkimKeyError naming the file otherwise."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DkimKeyError(f"{path}: DKIM private key file not found") from None
    except OSError as exc:
        raise DkimKeyError(f"{path}: cannot read the DKIM private key ({exc.strerror})") from None
    data = data.replace(b"\r\n", b"\n")  # dkimpy only finds the PEM body between LF line ends
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:
        raise DkimKeyError(f"{path}: the DKIM private key is encrypted; store it without a passphrase")
    if b"PRIVATE KEY-----" not in data:
        raise DkimKeyError(f"{path}: not a PEM private key (expected '-----BEGIN PRIVATE KEY-----')")
    try:
        dkim.crypto.parse_pem_private_key(data)
    except (dkim.crypto.UnparsableKeyError, ValueError) as exc:
        raise DkimKeyError(f"{path}: not a PEM RSA private key ({str(exc).splitlines()[0]})") from None
    return data


def dkim_sign(message: bytes, *, selector: str, domain: str, private_key: bytes) -> bytes:
    """The message with a DKIM-Signature header in front (rsa-sha256, relaxed/relaxed). Each header is listed
    twice in h=: the second, empty instance makes a header added on the way, or a Reply-To the message did not
    have, break the signature."""
    signature: bytes = dkim.sign(
        message,
        selector.encode("ascii"),
        domain.encode("ascii"),
        private_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[h.encode("ascii") for h in SIGNED_HEADERS * 2],
    )
    return signature + message

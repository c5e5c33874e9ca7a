"""The parts of a returned message, as a report reader needs them: the message parsed (robust to
broken input), its headers as text, each part decoded, sorted by what it is to a report (the report's
own words, delivery-status and feedback-report fields, the returned message), and the addresses a text
names. Pure: no IO.
"""

from __future__ import annotations

import functools
import html
import re
import string
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from typing import Any

# Bounds on the work one message may cost: a report is a few kilobytes, spam can be megabytes.
_MAX_PARTS = 200
_MAX_DEPTH = 12
MAX_TEXT = 64_000


class _Unstructured(UnstructuredHeader):
    """A header the registry has no class for (most of a report's: Final-Recipient, Diagnostic-Code,
    X-Postfix-Sender, Delivered-To), read as the standard class reads it, but without its parse tree
    when the value is plain printable ASCII with no encoded word: the text is then the value as it is,
    which is all the parser would return, at a tenth of the cost. The tree only serves to write the
    header out again, which a reader never does."""

    @classmethod
    def parse(cls, value: str, kwds: dict[str, Any]) -> None:
        if value.isascii() and value.isprintable() and "=?" not in value:
            kwds["parse_tree"] = None
            kwds["decoded"] = value
            return
        super().parse(value, kwds)


_REGISTRY = HeaderRegistry(default_class=_Unstructured)
# Content-Type as text: every reader of it (the parser, get_content_type, get_param, the detectors)
# splits the text itself; the registry's class would parse its parameters into a tree first, for each
# message anew (a boundary is unique), a tenth of the cost of reading a report. Only plain values: no
# comment, no encoded word, no RFC 2231 parameter, no escape; the others get the registry's class.
_AS_TEXT = HeaderRegistry(default_class=_Unstructured, use_default_map=False)
_NOT_PLAIN = re.compile(r"[()*\\]|=\?")


@functools.lru_cache(maxsize=4096)
def _parsed_header(name: str, value: str) -> BaseHeader:
    if name.lower() == "content-type" and value.isascii() and value.isprintable() and not _NOT_PLAIN.search(value):
        return _AS_TEXT(name, value)
    return _REGISTRY(name, value)


# policy.default parses a header each time it is read, and the parser reads Content-Type dozens of
# times per message (a DSN: 3.3 ms of parsing, against 0.3 ms without the registry). Header objects are
# immutable, so the same (name, value) is parsed once.
_POLICY = policy.default.clone(header_factory=_parsed_header)


def parse(raw: bytes) -> Message:
    return BytesParser(policy=_POLICY).parsebytes(raw)


_RETURNED = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers", "message/global-headers"}
)
_DELIVERY_STATUS = frozenset({"message/delivery-status", "message/global-delivery-status"})
_FEEDBACK = "message/feedback-report"
_DISPOSITION = frozenset({"message/disposition-notification", "message/global-disposition-notification"})

# An address is found from its `@` outwards, each side bounded (a local part is at most 64 octets, RFC
# 5321): a pattern that starts anywhere takes quadratic time on a long run of letters.
_LOCAL_CHARS = frozenset(string.ascii_letters + string.digits + "_.!#$%&'*+/=?^`{|}~-")
_DOMAIN = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63}){1,126}")
# Providers that hide the complainant put a placeholder in its place (AOL, Comcast): not an address.
_PLACEHOLDERS = frozenset({"redacted"})
_TAGS = re.compile(r"<[^<>]*>")


def header_values(message: Message, name: str) -> list[str]:
    """A header's values as text; none when the email package cannot read it."""
    try:
        return [str(value) for value in message.get_all(name) or []]
    # A malformed header value can make the header registry raise on access (IndexError, ValueError).
    except Exception:
        return []


def decode(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return payload.decode("utf-8", errors="replace")


def addresses_in(text: str) -> list[str]:
    """The addresses a text names, lower-cased, in order, once each."""
    seen: dict[str, None] = {}
    at = text.find("@")
    while at >= 0:
        start = at
        while start > 0 and at - start <= 64 and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        domain = _DOMAIN.match(text, at + 1)
        if start < at and at - start <= 64 and domain is not None:
            local = text[start:at].lower()
            if local not in _PLACEHOLDERS:
                seen.setdefault(f"{local}@{domain.group(0).rstrip('.').lower()}", None)
        at = text.find("@", at + 1)
    return list(seen)


def field_blocks(text: str) -> list[list[tuple[str, str]]]:
    """RFC 3464 / RFC 5965 field blocks (`Name: value`, folded lines joined), split at blank lines."""
    blocks: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append([])
        elif line[0] in " \t" and blocks[-1]:
            name, value = blocks[-1][-1]
            blocks[-1][-1] = (name, f"{value} {line.strip()}")
        elif ":" in line:
            name, value = line.split(":", 1)
            blocks[-1].append((name.strip().lower(), value.strip()))
    return [block for block in blocks if block]


def fields_text(part: Message) -> str:
    """The text of a delivery-status or feedback-report part, however the email package parsed it:
    as header blocks (message/delivery-status), as one embedded message, or as a plain payload."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return decode(part)
    chunks = []
    for block in payload:
        if isinstance(block, Message):
            chunks.append("\n".join(f"{name}: {value}" for name, value in _items(block)))
            body = block.get_payload()
            if isinstance(body, str) and body.strip():
                chunks.append(body)
    return "\n\n".join(chunks)


def _items(message: Message) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for name in dict.fromkeys(message.keys()):
        items.extend((name, value) for value in header_values(message, name))
    return items


@dataclass
class Parts:
    """A message's parts sorted by what they are to a report."""

    text: list[str] = field(default_factory=list)  # the report's own words
    delivery_status: list[str] = field(default_factory=list)
    nested_status: list[str] = field(default_factory=list)  # a report forwarded inside another message
    feedback: list[str] = field(default_factory=list)
    returned: list[Message] = field(default_factory=list)
    everything: list[str] = field(default_factory=list)  # every decoded part, returned ones included
    disposition: bool = False


def sort_parts(message: Message) -> Parts:
    parts = Parts()
    html_text: list[str] = []
    budget = [_MAX_PARTS]

    def visit(part: Message, depth: int, inside_returned: bool) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > _MAX_DEPTH:
            return
        ctype = part.get_content_type()
        if ctype in _DELIVERY_STATUS or ctype == _FEEDBACK:
            fields = fields_text(part)
            parts.everything.append(fields)
            if ctype == _FEEDBACK:
                parts.feedback.extend([fields] if not inside_returned else [])
            else:
                (parts.nested_status if inside_returned else parts.delivery_status).append(fields)
            return
        if ctype in _DISPOSITION:
            parts.disposition = parts.disposition or not inside_returned
            return
        if ctype in _RETURNED and not inside_returned:
            parts.returned.extend(_returned_messages(part))
            inside_returned = True
        payload = part.get_payload()
        if isinstance(payload, list):
            for child in payload:
                if isinstance(child, Message):
                    visit(child, depth + 1, inside_returned)
        elif part.get_content_maintype() == "text" or ctype in _RETURNED:
            text = decode(part)
            if ctype == "text/html":
                text = html.unescape(_TAGS.sub(" ", text[:MAX_TEXT]))
            parts.everything.append(text)
            if not inside_returned:
                (html_text if ctype == "text/html" else parts.text).append(text)

    visit(message, 0, False)
    if not parts.text:  # an HTML-only bounce: its words, without the markup
        parts.text = html_text
    return parts


def _returned_messages(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [child for child in payload if isinstance(child, Message)]
    raw = part.get_payload(decode=True)
    if isinstance(raw, bytes):  # text/rfc822-headers: only the headers, as text
        return [BytesHeaderParser(policy=_POLICY).parsebytes(raw)]
    return []

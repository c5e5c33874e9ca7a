"""What of a log line may not reach the log in clear, and what it becomes. Pure: text in, text out.

No address of a lead reaches the log in clear, whatever its characters. Where the engine logs text that
may carry one (a relay's reply, an exception about a message, a request's path), it passes the text
through `pseudonymise` with the addresses it knows of, so each becomes a short pseudonym, the same for
every spelling of one address (`<lead:3f2a9c01de>`). Every finished line is then scrubbed (`scrub`) as a
second guard, for what libraries log and what nobody foresaw: anything shaped like an address (in any
script, fullwidth, percent-encoded) gets its pseudonym, signed link tokens, API keys and bearer tokens are
cut, and a URL keeps its origin only (a receiver's path or query may hold a secret). The handlers that
apply it are `engine.runtime.logs`'.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import unquote, urlsplit

from engine.core import addresses

# An address in any script: a local part, an at-sign (fullwidth, or percent-encoded in a path), and a
# domain of two labels or more (with any of the dots IDNA reads as dots). Quotes, brackets, slashes and
# query punctuation around an address are not taken into it, so that one address gets one pseudonym
# however a line frames it. Bounded lengths (a local part is at most 64 octets and a label 63, three
# times that percent-encoded) keep the scan of a long line linear.
_LOCAL = r"[^\s@＠<>()\[\]{}\\,;:\"'`/|?#=&]{1,200}"
_LABEL = r"[^\s@＠<>()\[\]{}\\,;:\"'`/|?#=&.．。｡]{1,200}"
EMAIL = re.compile(rf"{_LOCAL}(?:[@＠]|%40){_LABEL}(?:[.．。｡]{_LABEL})+", re.IGNORECASE)
# Links carrying a signed token (which holds the address): unsubscribe, preferences, clicks, opens,
# opt-in confirmations; cut whole, even a token cut short.
TOKEN_PATH = re.compile(r"/(u|p|c|o|confirm)/[A-Za-z0-9_=.%-]+")
API_KEY = re.compile(r"\bfk_[A-Za-z0-9_-]{8,}")
BEARER = re.compile(r"(?i)(bearer\s+)\S+")
URL = re.compile(r"(?i)\bhttps?://[^\s\"'<>()]+")


def pseudonym(address: str) -> str:
    """The short stable name of an address in the logs: the same for the same address however it is
    written (case, Unicode or ASCII domain, percent-encoded), so ops can follow one lead through them."""
    key = addresses.lookup_key(unquote(address) if "%" in address else address)
    return "<lead:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:10] + ">"


def pseudonymise(text: str, *known: str) -> str:
    """`text` with every spelling of these addresses replaced by its pseudonym: for text about a lead that
    someone else wrote (a relay's reply, an exception's message) before it is logged."""
    for address in known:
        spelled = sorted(addresses.spellings(address), key=len, reverse=True)
        pattern = "|".join(re.escape(s) for s in spelled if s)
        if pattern:
            text = re.sub(pattern, pseudonym(address), text, flags=re.IGNORECASE)
    return text


def origin(url: str) -> str:
    """Scheme, host and port of a URL, for logs: its path or query may carry a token."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # without a user or password
    return f"{parts.scheme}://{host}"


def safe_path(path: str) -> str:
    """A request's path for a log line: a segment holding an address becomes its pseudonym, a signed
    token is cut."""
    segments = [pseudonym(unquote(s)) if "@" in unquote(s) else s for s in path.split("/")]
    return TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/<token>", "/".join(segments))


def scrub(text: str) -> str:
    """The second guard, on every finished line."""
    text = URL.sub(lambda m: origin(m.group(0)), text)
    text = TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/<token>", text)
    text = API_KEY.sub("fk_<key>", text)
    text = BEARER.sub(r"\1<key>", text)
    if "@" not in text and "＠" not in text and "%40" not in text:
        return text  # most lines: no address to look for
    return EMAIL.sub(lambda m: pseudonym(m.group(0)), text)

"""DKIM: a message from build_mime signs and verifies against its published key, the unsubscribe headers are
covered by the signature, and a key file problem is reported with the file's name."""

from __future__ import annotations

import base64
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest

from engine.mail.mime import DkimKeyError, build_mime, dkim_sign, load_dkim_key

SELECTOR = "s2026"
DOMAIN = "greenleaf.example"


@dataclass(frozen=True)
class KeyPair:
    private_pem: Path
    public_pem: Path
    txt_record: bytes  # what the domain publishes at <selector>._domainkey.<domain>


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    folder = tmp_path_factory.mktemp("dkim")
    private, public = folder / "private.pem", folder / "public.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-out", str(public)], check=True, capture_output=True
    )
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return KeyPair(private, public, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))


def dns_for(keys: KeyPair) -> object:
    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        return keys.txt_record if name.rstrip(b".") == f"{SELECTOR}._domainkey.{DOMAIN}".encode() else None

    return txt


def message(unsubscribe: bool = True) -> bytes:
    return build_mime(
        from_name="Greenleaf Consulting",
        from_address=f"news@{DOMAIN}",
        to="sam@example.com",
        subject="Your report is ready",
        date=datetime(2026, 3, 29, 7, 0, tzinfo=UTC),
        message_id=f"<0123456789abcdef01234567@{DOMAIN}>",
        reply_to=None,
        list_unsubscribe=(f"https://{DOMAIN}/u/tok", f"mailto:news@{DOMAIN}?subject=unsubscribe")
        if unsubscribe
        else None,
        extra_headers=(("X-Funnel", "lead-magnet/2"),),
        text="Hello Sam,\n\nhere it is.\n",
        html="<p>Hello Sam,</p>\n",
    )


def signed(keys: KeyPair, msg: bytes | None = None) -> bytes:
    return dkim_sign(
        message() if msg is None else msg, selector=SELECTOR, domain=DOMAIN, private_key=load_dkim_key(keys.private_pem)
    )


def signed_headers(data: bytes) -> list[str]:
    head = data.partition(b"\r\n\r\n")[0].decode()
    field = re.search(r"^DKIM-Signature:(.*?)\r\n(?! )", head + "\r\n", re.S | re.M)
    assert field is not None
    tags = dict(t.strip().split("=", 1) for t in re.sub(r"\s+", "", field.group(1)).split(";") if t)
    return tags["h"].split(":")


def test_a_signed_message_verifies_against_the_published_key(keys: KeyPair) -> None:
    data = signed(keys)
    assert data.startswith(b"DKIM-Signature:") and data.endswith(message())
    assert dkim.verify(data, dnsfunc=dns_for(keys))


def test_the_signature_covers_the_headers_that_matter(keys: KeyPair) -> None:
    h = signed_headers(signed(keys))
    for name in ("from", "to", "subject", "date", "message-id", "reply-to", "mime-version", "content-type"):
        assert name in h
    assert "list-unsubscribe" in h and "list-unsubscribe-post" in h


def test_changing_the_unsubscribe_link_after_signing_breaks_the_signature(keys: KeyPair) -> None:
    data = signed(keys)
    forged = data.replace(f"https://{DOMAIN}/u/tok".encode(), b"https://evil.example/u/tok")
    assert forged != data
    assert not dkim.verify(forged, dnsfunc=dns_for(keys))


@pytest.mark.parametrize(
    "added", [b"Reply-To: thief@evil.example\r\n", b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"]
)
def test_a_header_added_after_signing_breaks_the_signature(keys: KeyPair, added: bytes) -> None:
    # Reply-To was absent and the transactional message had no unsubscribe headers: both were signed as absent.
    data = signed(keys, message(unsubscribe=False))
    assert dkim.verify(data, dnsfunc=dns_for(keys))
    assert not dkim.verify(added + data, dnsfunc=dns_for(keys))


def test_a_body_changed_after_signing_breaks_the_signature(keys: KeyPair) -> None:
    data = signed(keys)
    assert not dkim.verify(data.replace(b"here it is.", b"here it was."), dnsfunc=dns_for(keys))


def test_a_key_with_windows_line_ends_loads(keys: KeyPair, tmp_path: Path) -> None:
    crlf = tmp_path / "crlf.pem"
    crlf.write_bytes(keys.private_pem.read_bytes().replace(b"\n", b"\r\n"))
    data = dkim_sign(message(), selector=SELECTOR, domain=DOMAIN, private_key=load_dkim_key(crlf))
    assert dkim.verify(data, dnsfunc=dns_for(keys))


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(DkimKeyError, match=re.escape(f"{missing}: DKIM private key file not found")):
        load_dkim_key(missing)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a PEM private key"),
        (b"selector=s2026\n", "not a PEM private key"),
        (b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n", "not a PEM RSA private key"),
        (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", "encrypted"),
    ],
)
def test_a_file_that_is_not_a_private_key_is_named(tmp_path: Path, content: bytes, reason: str) -> None:
    bad = tmp_path / "dkim.pem"
    bad.write_bytes(content)
    with pytest.raises(DkimKeyError, match=re.escape(str(bad)) + ".*" + reason):
        load_dkim_key(bad)


def test_a_public_key_is_not_taken_for_the_private_one(keys: KeyPair) -> None:
    with pytest.raises(DkimKeyError, match=re.escape(str(keys.public_pem)) + ".*not a PEM private key"):
        load_dkim_key(keys.public_pem)

"""Where an outbound webhook may go: the address policy, pure. Every address a receiver's host resolves to
is judged; loopback, private, link-local, unique-local and the other special ranges (and public
addresses that only wrap one of those) are refused unless the host is named in the settings; the
engine's own listeners are refused always. `funnel validate` judges the literal addresses it can read."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from engine.core.webhook_targets import Targets, address_problem, literal_address, url_problem

NOTHING_ALLOWED = Targets()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "link-local"),  # a cloud's metadata service
        ("10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("127.3.4.5", "loopback"),
        ("0.0.0.0", "this-network"),
        ("100.64.0.1", "shared"),  # carrier-grade NAT
        ("192.0.0.8", "IETF protocol"),
        ("192.0.2.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fd00:ec2::254", "unique-local"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("::ffff:10.0.0.5", "private"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("::10.0.0.5", "IPv4-compatible"),
        ("2002:a00:5::1", "private"),  # 6to4 of 10.0.0.5
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("64:ff9b:1::1", "local-use NAT64"),
        ("2001::1", "Teredo"),
        ("2001:db8::1", "documentation"),
        ("100::1", "discard"),
    ],
)
def test_an_address_in_a_special_range_is_refused_and_named(address: str, kind: str) -> None:
    problem = address_problem("crm.example.com", 443, ip_address(address), NOTHING_ALLOWED)
    assert problem is not None and kind in problem
    assert "webhooks.allow_private_hosts" in problem  # how to allow it, when it is really wanted


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450:4001::200e", "64:ff9b::808:808"]
)
def test_a_public_address_is_allowed(address: str) -> None:
    assert address_problem("crm.example.com", 443, ip_address(address), NOTHING_ALLOWED) is None


def test_a_host_named_in_the_settings_may_be_private_but_only_that_host() -> None:
    internal = Targets.of(allow_private_hosts=["crm.internal", "10.0.0.5", "[FD00:EC2::254]"])
    assert address_problem("crm.internal", 443, ip_address("10.1.2.3"), internal) is None
    assert address_problem("CRM.Internal.", 443, ip_address("10.1.2.3"), internal) is None
    assert address_problem("10.0.0.5", 80, ip_address("10.0.0.5"), internal) is None
    assert address_problem("fd00:ec2::254", 80, ip_address("fd00:ec2::254"), internal) is None
    assert address_problem("other.internal", 443, ip_address("10.1.2.3"), internal) is not None
    assert address_problem("10.0.0.6", 80, ip_address("10.0.0.6"), internal) is not None


def test_the_engine_s_own_listeners_are_refused_even_when_their_host_is_allowed() -> None:
    own = Targets.of(
        allow_private_hosts=["127.0.0.1", "localhost"],
        base_url="https://news.greenleaf.example",
        http_host="127.0.0.1",
        http_port=8000,
    )
    for host in ("127.0.0.1", "localhost"):
        problem = address_problem(host, 8000, ip_address("127.0.0.1"), own)
        assert problem is not None and "the engine's own" in problem
    assert address_problem("127.0.0.1", 9000, ip_address("127.0.0.1"), own) is None  # another service, allowed
    base = address_problem("news.greenleaf.example", 443, ip_address("93.184.215.14"), own)
    assert base is not None and "base_url" in base
    # Listening on every address: any address of this machine on that port is the engine.
    everywhere = Targets.of(http_host="0.0.0.0", http_port=8000)
    mine = address_problem("funnels.example.com", 8000, ip_address("203.0.113.7"), everywhere, local=True)
    assert mine is not None and "the engine's own" in mine
    assert address_problem("crm.example.com", 8000, ip_address("93.184.215.14"), everywhere, local=False) is None


def test_an_address_of_this_machine_is_refused_unless_allowed() -> None:
    problem = address_problem("crm.example.com", 5432, ip_address("93.184.215.14"), NOTHING_ALLOWED, local=True)
    assert problem is not None and "this machine" in problem
    allowed = Targets.of(allow_private_hosts=["crm.example.com"])
    assert address_problem("crm.example.com", 5432, ip_address("93.184.215.14"), allowed, local=True) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("169.254.169.254", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),  # one number, as inet_aton reads it
        ("0xa9fea9fe", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),  # octal parts
        ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
        ("169.254.43518", "169.254.169.254"),  # the last part fills what is left
        ("127.1", "127.0.0.1"),
        ("[fd00:ec2::254]", "fd00:ec2::254"),
        ("[::ffff:a9fe:a9fe]", "::ffff:169.254.169.254"),
    ],
)
def test_every_way_of_writing_an_address_is_read_as_that_address(host: str, address: str) -> None:
    assert literal_address(host) == ip_address(address)


@pytest.mark.parametrize("host", ["crm.example.com", "1.2.3.4.5", "256.1.1.1", "0x", "09.1.1.1", "1e3", ""])
def test_a_name_is_not_an_address(host: str) -> None:
    assert literal_address(host) is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.5/hook", "10.0.0.5 is a private address"),
        ("http://[fd00:ec2::254]/x", "fd00:ec2::254 is a unique-local address"),
        ("http://2852039166/", "2852039166 is 169.254.169.254, a link-local address"),
        ("https://localhost:8443/x", "localhost is a loopback address"),
        ("http://api.localhost/x", "api.localhost is a loopback address"),
        ("http://127.0.0.1:8000/ops/outbox", "127.0.0.1 is a loopback address"),
    ],
)
def test_validate_refuses_a_literal_address_the_policy_refuses(url: str, words: str) -> None:
    problem = url_problem(url, NOTHING_ALLOWED)
    assert problem is not None and words in problem


def test_validate_leaves_names_to_the_send_time_check_and_honours_the_allowed_hosts() -> None:
    assert url_problem("https://crm.example.com/hooks/funnel", NOTHING_ALLOWED) is None
    assert url_problem("http://10.0.0.5/hook", Targets.of(allow_private_hosts=["10.0.0.5"])) is None
    own = Targets.of(allow_private_hosts=["127.0.0.1"], http_port=8000)
    problem = url_problem("http://127.0.0.1:8000/ops/outbox", own)
    assert problem is not None and "the engine's own" in problem
    assert url_problem("http://127.0.0.1:9000/in", own) is None

"""Real mail servers for the tests: a private postfix instance and a private dovecot, on loopback.

Both are Debian's packages (`.ci/run` installs them like PostgreSQL), started from a configuration
written into a temporary directory, so the machine's own mail set-up is neither used nor touched:

- `Postfix` is a relay on a loopback port. `routes` sends each domain to its next hop (dovecot's LMTP
  for the mailboxes, a test's own SMTP server for the bounce domain...); `refuse` makes the relay
  itself refuse a recipient domain at RCPT with a given reply (what a relay says at send time); a
  second listener, `remote_port`, plays a receiving server that refuses with `remote_refuse`, so that
  postfix writes the delivery status notification itself. Timers are seconds, not days, so that a
  delay warning and an expiry happen within a test.
- `Dovecot` holds mailboxes (maildir, with a quota per user) behind LMTP and IMAP over TLS, with a
  self-signed certificate the test trusts.

postfix's master must start as root, and dovecot drops to the `mail` user: without root, or without
the binaries, `require()` skips, or fails when `CI` is set (a CI run must not pass without them).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def require() -> None:
    """Skip (or fail under CI) unless postfix, dovecot and root are all here."""
    missing = [name for name, path in (("postfix", POSTFIX), ("dovecot", DOVECOT)) if not Path(path).exists()]
    problem = ""
    if missing:
        problem = f"missing {' and '.join(missing)} (apt-get install postfix dovecot-imapd dovecot-lmtpd)"
    if not problem and os.geteuid() != 0:
        problem = "postfix's master process must start as root"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"mail servers: {problem}", pytrace=False)
        pytest.skip(f"mail servers: {problem}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def _table(path: Path, mapping: Mapping[str, str]) -> str:
    """A postfix lookup table that needs no `postmap`: one `key value` line each."""
    path.write_text("".join(f"{key} {value}\n" for key, value in mapping.items()))
    return f"texthash:{path}"


def _master_cf() -> Path:
    """The package's service table: installed as /etc/postfix/master.cf, or only as its template when the
    package was installed with no configuration."""
    installed = Path("/etc/postfix/master.cf")
    return installed if installed.exists() else Path("/usr/share/postfix/master.cf.dist")


class Postfix:
    """A private postfix relay on 127.0.0.1:`port`; `log()` is its mail log."""

    def __init__(
        self,
        routes: Mapping[str, str],
        refuse: Mapping[str, str] | None = None,
        remote_refuse: Mapping[str, str] | None = None,
        queue_lifetime: str = "1h",
        delay_warning: str = "0h",
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="funnel-postfix-"))
        self.root.chmod(0o755)  # postfix's own processes, not root, read the configuration and the maps
        self.port = free_port()
        self.remote_port = free_port()
        (self.root / "queue").mkdir()
        data = self.root / "data"
        data.mkdir()
        shutil.chown(data, "postfix")
        self.log_path = self.root / "maillog"
        # The engine-facing listener refuses what `refuse` names; the "remote" one plays another
        # organisation's server refusing what `remote_refuse` names after the relay accepted it.
        relay_rules = f"check_recipient_access {_table(self.root / 'refuse', refuse)}, " if refuse else ""
        remote_rules = (
            f"check_recipient_access,{_table(self.root / 'remote_refuse', remote_refuse)},permit"
            if remote_refuse
            else "permit"
        )
        all_routes = dict(routes)
        for domain in remote_refuse or {}:
            all_routes.setdefault(domain, f"smtp:[127.0.0.1]:{self.remote_port}")
        (self.root / "main.cf").write_text(
            "\n".join(
                [
                    "compatibility_level = 3.6",
                    f"queue_directory = {self.root / 'queue'}",
                    f"data_directory = {data}",
                    "mail_owner = postfix",
                    "myhostname = relay.test",
                    "mydomain = relay.test",
                    "myorigin = relay.test",
                    "mydestination =",
                    "inet_interfaces = 127.0.0.1",
                    "inet_protocols = ipv4",
                    "mynetworks = 127.0.0.0/8",
                    "alias_maps =",
                    "alias_database =",
                    f"maillog_file = {self.log_path}",
                    # postfix writes its log only under the prefixes it is told; otherwise it exits at once.
                    f"maillog_file_prefixes = {self.root}",
                    "smtputf8_enable = no",
                    "smtp_tls_security_level = none",
                    "smtpd_tls_security_level = none",
                    "disable_dns_lookups = yes",
                    "smtp_host_lookup = native",
                    f"relay_domains = {' '.join(all_routes)}",
                    f"transport_maps = {_table(self.root / 'transport', all_routes)}",
                    f"smtpd_recipient_restrictions = {relay_rules}permit_mynetworks, reject_unauth_destination",
                    "queue_run_delay = 1s",
                    "minimal_backoff_time = 1s",
                    "maximal_backoff_time = 2s",
                    f"maximal_queue_lifetime = {queue_lifetime}",
                    f"bounce_queue_lifetime = {queue_lifetime}",
                    f"delay_warning_time = {delay_warning}",
                    "",
                ]
            )
        )
        master = []
        for line in _master_cf().read_text().splitlines():
            fields = line.split()
            if line[:1].isalnum() and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    continue
                fields[4] = "n"  # no chroot: the queue is a temporary directory
                line = " ".join(fields)
            master.append(line)
        master.append(f"127.0.0.1:{self.port} inet n - n - - smtpd")
        master.append(
            f"127.0.0.1:{self.remote_port} inet n - n - - smtpd -o smtpd_recipient_restrictions={remote_rules}"
        )
        (self.root / "master.cf").write_text("\n".join(master) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Postfix:
        self.startup = (self.root / "startup").open("wb")
        self.process = subprocess.Popen(
            [POSTFIX, "-c", str(self.root), "start-fg"], stdout=self.startup, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(self.port)
        except TimeoutError as error:
            said = (self.root / "startup").read_text(errors="replace")
            raise RuntimeError(f"postfix did not start: {said[-2000:]}{self.log()[-2000:]}") from error
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def flush(self) -> None:
        """Try the deferred queue now (as `postqueue -f` does)."""
        subprocess.run([POSTFIX, "-c", str(self.root), "flush"], capture_output=True, check=False)

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.root), "stop"], capture_output=True, check=False)
        if self.process is not None:
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Dovecot:
    """A private dovecot: LMTP on `lmtp_port`, IMAP over TLS on `imaps_port`, users with a password and an
    optional quota in bytes; `ssl_context()` trusts its certificate."""

    def __init__(self, users: Mapping[str, int | None], password: str = "secret") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="funnel-dovecot-"))
        self.root.chmod(0o755)  # dovecot's processes run as other users
        self.lmtp_port = free_port()
        self.imaps_port = free_port()
        self.password = password
        home = self.root / "home"
        for sub in ("run", "state", "home"):
            (self.root / sub).mkdir()
        shutil.chown(home, "mail", "mail")
        self.cert = self.root / "cert.pem"
        key = self.root / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(self.cert),
             "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            capture_output=True, check=True,
        )  # fmt: skip
        mail = pwd.getpwnam("mail").pw_uid
        lines = []
        for user, quota in users.items():
            extra = f"userdb_quota_rule=*:bytes={quota}" if quota is not None else ""
            lines.append(f"{user}:{{PLAIN}}{password}:{mail}:{mail}::{home / user}::{extra}")
        (self.root / "passwd").write_text("\n".join(lines) + "\n")
        self.log_path = self.root / "log"
        (self.root / "dovecot.conf").write_text(
            f"""
base_dir = {self.root / "run"}
state_dir = {self.root / "state"}
log_path = {self.log_path}
protocols = imap lmtp
listen = 127.0.0.1
first_valid_uid = {mail}
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{key}
auth_mechanisms = plain
disable_plaintext_auth = yes
mail_location = maildir:~/Maildir
mail_plugins = quota
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {self.root / "passwd"}
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {self.root / "passwd"}
}}
plugin {{
  quota = maildir:User quota
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0
  }}
}}
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Dovecot:
        self.process = subprocess.Popen(
            [DOVECOT, "-c", str(self.root / "dovecot.conf"), "-F"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.lmtp_port)
            wait_for_port(self.imaps_port)
        except TimeoutError as error:
            raise RuntimeError(f"dovecot did not start: {self.log()[-2000:]}") from error
        return self

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""`lineinspect hmi …`: the commands an engineer uses to secure the HMI, on the controller's machine.

- `trust CERT`: trust a panel's (client's) certificate; a refused one waits in `rejected/`, named in
  the HMI's log, so `trust <pki>/rejected/<name>.der` is the usual way;
- `certificate`: where the server's certificate is and its thumbprint, for the panel to trust it
  (generated now if the HMI never started);
- `client-certificate --uri URI --out DIR`: a key and certificate for a client that cannot make its
  own (a script, a command-line tool), already trusted;
- `user add NAME --role R`, `user remove NAME`, `user list`: the users file (passwords hashed).

All take the line's config (`--config line.toml`) to find the folders; a running HMI picks every
change up without a restart. Not here: the checks themselves (hmi/security.py).
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from pathlib import Path

from controller.config import LineConfig, load_config
from controller.errors import ConfigError
from hmi.security import THUMBPRINT, Pki, Role, SecurityError, UserStore, load_certificate_file, trust_certificate
from hmi.settings import HmiSettings, hmi_settings


def settings_for(config: str | None) -> HmiSettings:
    cfg = load_config(Path(config)) if config else LineConfig()
    return hmi_settings(cfg.hmi, cfg.journal.path)


def trust(config: str | None, cert: str) -> str:
    settings = settings_for(config)
    try:
        target = trust_certificate(Pki(settings.pki_dir), Path(cert))
    except SecurityError as exc:
        raise ConfigError(str(exc)) from exc
    subject = load_certificate_file(target).subject.rfc4514_string()
    return f"trusted {subject}: {target}"


def certificate(config: str | None) -> str:
    from hmi.server import DEFAULT_NAMESPACE

    settings = settings_for(config)
    pki = Pki(settings.pki_dir)
    asyncio.run(pki.ensure_server_certificate(f"{DEFAULT_NAMESPACE}:hmi"))
    cert = load_certificate_file(pki.cert)
    thumb = cert.fingerprint(THUMBPRINT).hex(":")
    return (f"{pki.cert}\nsubject {cert.subject.rfc4514_string()}\nSHA-1 thumbprint {thumb}\n"
            f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")


def client_certificate(config: str | None, uri: str, out: str) -> str:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, cert = folder / "client-key.pem", folder / "client-cert.der"
    asyncio.run(setup_self_signed_certificate(key, cert, uri, "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH],
                                              {"commonName": f"lineinspect panel {uri}"}))  # fmt: skip
    key.chmod(0o600)
    return f"{key}\n{trust(config, str(cert))}"


def add_user(config: str | None, name: str, role: str, password_stdin: bool) -> str:
    settings = settings_for(config)
    try:
        parsed = Role.parse(role)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
    try:
        UserStore(settings.users_file).add(name, parsed, password)
    except SecurityError as exc:
        raise ConfigError(str(exc)) from exc
    return f"user {name} is {parsed.name.lower()} ({settings.users_file})"


def remove_user(config: str | None, name: str) -> str:
    settings = settings_for(config)
    if not UserStore(settings.users_file).remove(name):
        raise ConfigError(f"no user {name!r} in {settings.users_file}")
    return f"user {name} removed"


def list_users(config: str | None) -> str:
    settings = settings_for(config)
    try:
        users = UserStore(settings.users_file).users()
    except SecurityError as exc:
        raise ConfigError(str(exc)) from exc
    return "\n".join(f"{u.name}\t{u.role.name.lower()}" for u in users) or f"no users in {settings.users_file}"

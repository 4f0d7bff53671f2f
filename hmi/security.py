"""Who may talk to the HMI: its users (hashed passwords, one role each) and its certificates (the
server's own, generated on first start, and the folder of client certificates it trusts).

Files (all under folders the controller's config names; nothing here knows the config):
- the users file, JSON, mode 0600: `{"users": {"alice": {"role": "operator", "password": "scrypt$…"}}}`,
  managed with `lineinspect hmi user add|remove|list` and re-read when it changes (no restart);
- the PKI folder: `own/cert.der` + `own/key.pem` (the server's), `trusted/` (client certificates an
  engineer trusted with `lineinspect hmi trust CERT`, re-read when the folder changes), `rejected/`
  (each certificate a client was refused for, so an engineer can inspect it and trust it).

Roles are ordered: each has every right of the roles before it (hmi/access.py has the matrix).
Passwords are stored as scrypt hashes (stdlib, memory-hard), compared in constant time.

Not here: which service or method needs which role (hmi/access.py), the OPC UA server (hmi/server.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

_log = logging.getLogger(__name__)


class Role(IntEnum):
    """Least privilege: viewer reads; operator halts, starts and acknowledges; engineer switches
    recipes and shadow mode; admin manages users."""

    VIEWER = 1
    OPERATOR = 2
    ENGINEER = 3
    ADMIN = 4

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r} (one of {', '.join(r.name.lower() for r in cls)})") from None


class SecurityError(Exception):
    """A users file or certificate that cannot be used: one line naming the file and the problem."""


# -- users --------------------------------------------------------------------------------------------

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
"""~40 ms and 16 MiB per check: cheap for a login, costly for guessing."""
MIN_PASSWORD = 8
USER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def password_matches(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected))  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


@dataclass(frozen=True, slots=True)
class HmiUser:
    name: str
    role: Role


class UserStore:
    """The users file. Reads are cached and refreshed when the file changes; writes are atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, dict[str, str]] = {}

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return self._users
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                raw = json.loads(self.path.read_text())
                users = raw["users"]
                for entry in users.values():
                    Role.parse(entry["role"])
                    if not isinstance(entry["password"], str):
                        raise TypeError("password is not a string")
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SecurityError(f"users file {self.path}: {exc}") from exc
            self._stamp, self._users = stamp, users
        return self._users

    @property
    def stamp(self) -> object:
        """Changes whenever the file does (as last read)."""
        return self._stamp

    def users(self) -> list[HmiUser]:
        return [HmiUser(name, Role.parse(e["role"])) for name, e in sorted(self._load().items())]

    def role_of(self, name: str) -> Role | None:
        """The user's role now (None: no such user); a broken file means no role."""
        try:
            entry = self._load().get(name)
        except SecurityError:
            return None
        return Role.parse(entry["role"]) if entry else None

    def check(self, name: str, password: str) -> HmiUser | None:
        """The user, if the password is theirs; None otherwise (unknown users cost the same time)."""
        entry = self._load().get(name)
        stored = entry["password"] if entry else _DUMMY_HASH
        if not password_matches(password, stored) or entry is None:
            return None
        return HmiUser(name, Role.parse(entry["role"]))

    def add(self, name: str, role: Role, password: str) -> None:
        """Add a user, or replace one's role and password."""
        if not name or not set(name) <= USER_NAME_CHARS or len(name) > 64:
            raise SecurityError(f"user name {name!r}: 1-64 of letters, digits and . _ - @")
        if len(password) < MIN_PASSWORD:
            raise SecurityError(f"password for {name!r}: at least {MIN_PASSWORD} characters")
        users = dict(self._load())
        users[name] = {"role": role.name.lower(), "password": hash_password(password)}
        self._save(users)

    def remove(self, name: str) -> bool:
        users = dict(self._load())
        if users.pop(name, None) is None:
            return False
        self._save(users)
        return True

    def _save(self, users: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)  # a fresh file of ours, never one planted there (no link followed)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"users": users}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        self._stamp = None


_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


class HmiUserManager:
    """asyncua's user manager: username/password only. Remembers each logged-in name's role for the
    access rules (hmi/access.py), which see only asyncua's `User`.

    A password hash costs ~40 ms of CPU and 16 MiB of memory by design, and asyncua checks it on its
    event loop. So that logins cannot be turned into load: a password already verified is
    recognised by a keyed fast hash (while the users file is unchanged), and after
    `MAX_FAILURES` failed logins within `FAILURE_WINDOW_S` every further one is refused without
    hashing (for a user name; and for all names together, 4 times as many) until the window passes."""

    MAX_FAILURES = 5
    FAILURE_WINDOW_S = 60.0

    def __init__(self, store: UserStore, trusted: Callable[[bytes], bool], *, allow_unsecured: bool = False) -> None:
        """`trusted` says whether the secure channel's client certificate (DER) is trusted: asyncua
        checks the certificate a client puts in CreateSession, if it puts one, but never ties it
        to the channel, so the login checks the channel's own. Without one (a SecurityPolicy None
        channel) a login is refused unless `allow_unsecured`."""
        self.store = store
        self.trusted = trusted
        self.allow_unsecured = allow_unsecured
        self.roles: dict[str, Role] = {}
        self.refused = 0
        self.refused_unhashed = 0
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, HmiUser] = {}
        self._verified_stamp: object = None
        self._failures: dict[str, list[float]] = {}

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:  # fmt: skip
        if not username or password is None:
            self.refused += 1
            return None
        untrusted = (not self.allow_unsecured) if certificate is None else not self.trusted(certificate)
        if untrusted:
            self.refused += 1
            _log.warning("login refused for user %r: the secure channel's certificate is %s", username[:64],
                         "missing" if certificate is None else "not trusted")  # fmt: skip
            return None
        try:
            user = self._check(username, password)
        except SecurityError as exc:
            _log.error("%s", exc)  # a broken users file: nobody logs in, and the log says why
            user = None
        if user is None:
            self.refused += 1
            _log.warning("login refused for user %r", username[:64])
            return None
        self.roles[user.name] = user.role
        return User(role=UserRole.User, name=user.name)

    def _check(self, name: str, password: str) -> HmiUser | None:
        self.store.users()  # re-reads a changed file: a removed user or a new password takes effect
        if self._verified_stamp != self.store.stamp:
            self._verified, self._verified_stamp = {}, self.store.stamp
        token = hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        if (known := self._verified.get(token)) is not None:
            return known
        now = time.monotonic()
        self._failures = {n: kept for n, ts in self._failures.items()
                          if (kept := [t for t in ts if now - t < self.FAILURE_WINDOW_S])}  # fmt: skip
        recent = self._failures.get(name, [])
        everyone = sum(len(ts) for ts in self._failures.values())
        if len(recent) >= self.MAX_FAILURES or everyone >= 4 * self.MAX_FAILURES:
            self.refused_unhashed += 1
            return None
        user = self.store.check(name, password)
        if user is None:
            key = name if len(self._failures) < 100 or name in self._failures else "\0others"
            self._failures[key] = [*self._failures.get(key, []), now]  # bounded: 100 names and the rest together
            return None
        self._verified[token] = user
        self._failures.pop(name, None)
        return user


# -- certificates -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pki:
    root: Path

    @property
    def cert(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def key(self) -> Path:
        return self.root / "own" / "key.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    def make_folders(self) -> None:
        for folder in (self.cert.parent, self.trusted, self.rejected):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def ensure_server_certificate(self, app_uri: str) -> None:
        """Generate the server's key and self-signed certificate on first start (and when the
        certificate expired or names another application)."""
        self.make_folders()
        host = socket.gethostname()
        await setup_self_signed_certificate(
            self.key, self.cert, app_uri, host, [ExtendedKeyUsageOID.SERVER_AUTH],
            {"commonName": f"lineinspect HMI@{host}", "organizationName": "lineinspect"},
        )  # fmt: skip
        with contextlib.suppress(OSError):
            os.chmod(self.key, 0o600)


def load_certificate_file(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"certificate {path}: {exc.strerror or exc}") from exc
    for load in (x509.load_der_x509_certificate, x509.load_pem_x509_certificate):
        with contextlib.suppress(ValueError):
            return load(data)
    raise SecurityError(f"certificate {path}: neither DER nor PEM X.509")


def trust_certificate(pki: Pki, path: Path) -> Path:
    """Copy a client certificate into the trusted folder (as DER, named by its thumbprint);
    a running HMI picks it up at the client's next connection."""
    cert = load_certificate_file(path)
    pki.make_folders()
    target = pki.trusted / f"{cert.fingerprint(THUMBPRINT).hex()}.der"
    target.write_bytes(cert.public_bytes(Encoding.DER))
    (pki.rejected / target.name).unlink(missing_ok=True)
    return target


THUMBPRINT = hashes.SHA1()
"""The OPC UA certificate thumbprint (Part 6)."""


class TrustListValidator:
    """Client certificates: in time, for this application, for client use, and in the trusted folder
    (or issued by a CA that is). The folder is re-read when it changes; a refused certificate is kept
    in `rejected/` for an engineer to inspect."""

    OPTIONS = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT

    MAX_REJECTED = 100
    """Refused certificates kept for inspection; beyond, none is added (each client may bring a new one)."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self._store = TrustStore([pki.trusted], [])
        self._validator = CertificateValidator(self.OPTIONS, self._store)
        self._stamp: tuple[int, int] | None = None
        self._sync_stamp: tuple[int, int] | None = None
        self._anchors: list[x509.Certificate] = []
        self._thumbprints: frozenset[bytes] = frozenset()
        self.refused = 0

    async def __call__(self, cert: x509.Certificate, app_description: ua.ApplicationDescription) -> None:
        await self._reload_if_changed()
        try:
            await self._validator.validate(cert, app_description)
        except ServiceError as exc:
            self.refused += 1
            name = f"{cert.fingerprint(THUMBPRINT).hex()}.der"
            with contextlib.suppress(OSError):
                if len(list(self.pki.rejected.iterdir())) < self.MAX_REJECTED:
                    (self.pki.rejected / name).write_bytes(cert.public_bytes(Encoding.DER))
            _log.warning("client certificate refused (%s): %s, kept in %s", ua.StatusCode(exc.code).name,
                         cert.subject.rfc4514_string(), self.pki.rejected / name)  # fmt: skip
            raise

    def is_trusted_der(self, der: bytes) -> bool:
        """The login's check of the channel's certificate (sync: asyncua calls the user manager so):
        in its validity period, and in the trusted folder or issued by a certificate there."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return False
        self._reload_anchors_if_changed()
        if cert.fingerprint(THUMBPRINT) in self._thumbprints:
            return True
        if not self._anchors:
            return False
        permit = ExtensionPolicy.permit_all()
        verifier = PolicyBuilder().store(Store(self._anchors)).extension_policies(
            ca_policy=permit, ee_policy=permit).build_client_verifier()  # fmt: skip
        try:
            verifier.verify(cert, [])
        except VerificationError:
            return False
        return True

    def _reload_anchors_if_changed(self) -> None:
        st = self.pki.trusted.stat()
        stamp = (st.st_mtime_ns, len(list(self.pki.trusted.iterdir())))
        if stamp == self._sync_stamp:
            return
        anchors = []
        for path in sorted(self.pki.trusted.iterdir()):
            with contextlib.suppress(SecurityError):
                anchors.append(load_certificate_file(path))
        self._anchors, self._sync_stamp = anchors, stamp
        self._thumbprints = frozenset(c.fingerprint(THUMBPRINT) for c in anchors)

    async def _reload_if_changed(self) -> None:
        st = self.pki.trusted.stat()
        stamp = (st.st_mtime_ns, len(list(self.pki.trusted.iterdir())))
        if stamp != self._stamp:
            await self._store.load()
            self._stamp = stamp


async def load_server_identity(server: Any, pki: Pki) -> None:
    await server.load_certificate(str(pki.cert))
    await server.load_private_key(str(pki.key))


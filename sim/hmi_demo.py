"""Demo access to the simulated line's HMI: users of every role with random passwords and one
trusted client certificate, so a person (or the simulator's own clients) can log in.

`await provision_demo(settings, workdir)` writes, under the workdir:
- `hmi-demo/credentials.txt` (mode 0600): the endpoint, each user's name and password, and the
  client certificate and key to use (what `lineinspect sim` points people to);
- `hmi-demo/access.json`: the same for programs (`secure_client()`, the hmi-flood attacker, tests).
The users go into the HMI's users file and the certificate into its trusted folder, exactly as
`lineinspect hmi user add` and `lineinspect hmi trust` would put them.

Not here: the HMI's security itself (hmi/security.py).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from hmi.security import Pki, Role, UserStore, trust_certificate
from hmi.server import DEFAULT_NAMESPACE
from hmi.settings import HmiSettings

CLIENT_URI = "urn:lineinspect:sim:panel"
SERVER_URI = f"{DEFAULT_NAMESPACE}:hmi"
"""The HMI's application URI (as hmi/server.py sets it), named in its certificate."""
POLICY = "Basic256Sha256,SignAndEncrypt"


@dataclass(frozen=True)
class DemoAccess:
    endpoint: str
    users: dict[str, str]
    """role name → password; each role's user is named after it."""
    cert: str
    key: str
    server_cert: str
    """The HMI's own certificate (made here, before its first start): a client that has it needs no
    discovery round trip before it connects."""

    @classmethod
    def load(cls, path: Path) -> DemoAccess:
        return cls(**json.loads(path.read_text()))

    def with_endpoint(self, endpoint: str) -> DemoAccess:
        return replace(self, endpoint=endpoint)


async def provision_demo(settings: HmiSettings, workdir: Path) -> tuple[DemoAccess, Path]:
    """Users viewer/operator/engineer/admin and a trusted client certificate; returns the access and
    where its credentials file is."""
    folder = workdir / "hmi-demo"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, cert = folder / "client-key.pem", folder / "client-cert.der"
    await _client_certificate(key, cert)
    store = UserStore(settings.users_file)
    users = {}
    for role in Role:
        name = role.name.lower()
        users[name] = secrets.token_urlsafe(12)
        store.add(name, role, users[name])
    pki = Pki(settings.pki_dir)
    trust_certificate(pki, cert)
    await pki.ensure_server_certificate(SERVER_URI)
    access = DemoAccess(settings.endpoint, users, str(cert), str(key), str(pki.cert))
    _private(folder / "access.json", json.dumps(asdict(access), indent=1))
    text = [f"HMI endpoint: {settings.endpoint}", f"security: {POLICY} with the client certificate below",
            f"client certificate: {cert}", f"client key: {key}", "users (name = role):"]
    text += [f"  {name}  password {password}" for name, password in users.items()]
    credentials = folder / "credentials.txt"
    _private(credentials, "\n".join(text) + "\n")
    return access, credentials


def _private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


async def _client_certificate(key: Path, cert: Path) -> None:
    await setup_self_signed_certificate(key, cert, CLIENT_URI, "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH],
                                        {"commonName": "lineinspect simulated panel"})  # fmt: skip


async def secure_client(access: DemoAccess, role: str = "viewer", *, password: str | None = None,
                        request_timeout_s: float = 5.0, cert: str | None = None, key: str | None = None) -> Any:
    """An asyncua Client for `access.endpoint` as the user named `role`, over Basic256Sha256
    SignAndEncrypt with the demo certificate (or `cert`/`key`); not yet connected (nothing is sent
    before `connect()`)."""
    from asyncua import Client, ua
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    client = Client(access.endpoint, timeout=request_timeout_s)
    client.application_uri = CLIENT_URI
    mode = ua.MessageSecurityMode.SignAndEncrypt
    await client.set_security(SecurityPolicyBasic256Sha256, cert or access.cert, key or access.key,
                              server_certificate=access.server_cert, mode=mode)  # fmt: skip
    client.set_user(role)
    client.set_password(access.users.get(role, "") if password is None else password)
    return client

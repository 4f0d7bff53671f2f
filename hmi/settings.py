"""The HMI process's settings: what the controller's `[hmi]` config says, with every path resolved.

Handed to the HMI process as JSON on its command line (hmi/process.py → hmi/child.py).
Not here: the config file's own validation (controller/config.py `HmiConfig`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from controller.config import SECURE_POLICIES, HmiConfig, SecurityPolicy


class HmiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = "opc.tcp://127.0.0.1:4840/lineinspect/"
    security: tuple[SecurityPolicy, ...] = SECURE_POLICIES
    allow_unsecured: bool = False
    """Also offer SecurityPolicy None (passwords still required; a warning at every start)."""
    pki_dir: Path = Path("hmi-pki")
    users_file: Path = Path("hmi-users.json")
    journal: Path | None = None
    """The controller's journal, read (never written) for results and images by id."""
    max_sessions: int = Field(20, ge=1)
    max_request_bytes: int = Field(64 * 1024, ge=8192)
    metrics: str | None = None
    """host:port of the Prometheus endpoint (port 0: any free one); None: none."""


def hmi_settings(cfg: HmiConfig, journal: Path) -> HmiSettings:
    """What the HMI process needs from the config, paths resolved (by default beside the journal)."""
    folder = journal.resolve().parent
    return HmiSettings(endpoint=cfg.endpoint, security=tuple(cfg.security), allow_unsecured=cfg.allow_unsecured,
                       pki_dir=(cfg.pki_dir or folder / "hmi-pki").resolve(),
                       users_file=(cfg.users_file or folder / "hmi-users.json").resolve(),
                       journal=journal.resolve(), max_sessions=cfg.max_sessions, metrics=cfg.metrics)  # fmt: skip

"""The line configuration: TOML validated by pydantic, built once and passed down.

Unknown keys are errors (`extra="forbid"`), each backend is chosen by a `type` discriminator, and a
bad file gives one line naming the key (`ConfigError`), never a traceback.
Not here: building anything from it (controller/bootstrap.py).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.errors import ConfigError

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "shipped" / "model.onnx"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Snap7PlcConfig(_Strict):
    type: Literal["snap7"] = "snap7"
    host: str = "127.0.0.1"
    port: int = Field(102, ge=1, le=65535)
    rack: int = Field(0, ge=0)
    slot: int = Field(1, ge=0)
    db_plc_to_vision: int = Field(100, ge=1)
    db_vision_to_plc: int = Field(101, ge=1)
    poll_ms: float = Field(2.0, gt=0, le=50)
    heartbeat_ms: float = Field(20.0, gt=0, le=50, description="the contract demands ≤ 50 ms")
    request_timeout_ms: float = Field(100.0, gt=0)
    stale_ms: float = Field(100.0, gt=0, description="PLC `life` unchanged this long: link is stale")
    connect_timeout_s: float = Field(3.0, gt=0)
    request_shadow: bool = Field(False, description="ask the PLC for shadow mode from the start: the gate follows "
                                 "the existing inspection, vision is recorded beside it (the HMI can change it)")


class StreamCameraConfig(_Strict):
    type: Literal["stream"] = "stream"
    host: str = "127.0.0.1"
    port: int = Field(47800, ge=1, le=65535)
    host_clock: bool = Field(False, description="sender stamps exposures in this host's monotonic clock")


class PylonCameraConfig(_Strict):
    type: Literal["pylon"]
    serial: str | None = None
    trigger_source: str = "Line1"


class MatchConfig(_Strict):
    frame_latency_ms: float = Field(0.0, ge=0)
    tolerance_ms: float = Field(10.0, gt=0, description="largest |exposure − trigger| (camera delay, clock error)")
    same_part_ms: float = Field(15.0, gt=0, description="an exposure this close to the trigger shows the part")
    frame_delay_ms: float = Field(100.0, gt=0, description="the longest a frame takes from exposure to arrival")


class RayInferenceConfig(_Strict):
    type: Literal["ray"] = "ray"
    model: Path = SHIPPED_MODEL
    engine: Literal["onnx", "tensorrt"] = "onnx"
    actors: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0, description="per actor: 1 = one actor per GPU, 0.5 = two per GPU")
    max_batch: int = Field(1, ge=1, description="micro-batch size; on CPUs batching only adds latency")
    max_in_flight_per_actor: int = Field(4, ge=1, description="bounded; admission refuses what cannot finish in time")
    spread: bool = Field(False, description="place actors on different Ray nodes")
    dispatch: Literal["actor", "compiled"] = Field(
        "actor", description="compiled: Ray compiled graphs (shared memory); for actors with cores of their own")
    engine_cache_dir: Path = Path("runs/engines")
    ray_address: str | None = None
    """None: start a local Ray; otherwise join that cluster."""
    recipes_dir: Path | None = None
    """Installed models, one folder each (default: the folder above the model's own)."""
    registry: Path | None = Field(None, description="a model registry: the line runs its product's active "
                                  "version (not `model`) and follows promotions and rollbacks between parts")
    product: str = Field("default", description="the product whose registry versions this line runs")
    products: dict[int, str] = Field(default_factory=dict, description="the PLC's product id -> the registry "
                                     "product it selects: a changeover swaps to that product's active version")


class LocalInferenceConfig(_Strict):
    type: Literal["local"]
    model: Path = SHIPPED_MODEL
    threads: int = Field(1, ge=1)
    recipes_dir: Path | None = None
    registry: Path | None = Field(None, description="a model registry: the line runs its product's active "
                                  "version (not `model`) and follows promotions and rollbacks between parts")
    product: str = Field("default", description="the product whose registry versions this line runs")
    products: dict[int, str] = Field(default_factory=dict, description="the PLC's product id -> the registry "
                                     "product it selects: a changeover swaps to that product's active version")


class JournalConfig(_Strict):
    path: Path = Path("lineinspect.db")
    max_images: int = Field(20000, ge=0, description="oldest images are evicted first; records stay")
    stall_ms: float = Field(1000.0, gt=0, description="a record waiting this long for the disk: alarm, not ready")
    check_every_s: float = Field(3600.0, gt=0, description="PRAGMA quick_check of the open journal, off the writer")
    keep_images_days: float | None = Field(None, gt=0, description="frames older than this are deleted")
    keep_records_days: float | None = Field(None, gt=0, description="records, alarms, audit older than this too")
    max_size_mb: float | None = Field(None, gt=0, description="pages in use: oldest frames, then records, beyond")

    @model_validator(mode="after")
    def _frames_go_first(self) -> JournalConfig:
        if self.keep_images_days and self.keep_records_days and self.keep_images_days > self.keep_records_days:
            raise ValueError("keep_images_days must not exceed keep_records_days (a frame is kept with its record)")
        return self


SecurityPolicy = Literal[
    "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt",
    "Aes128Sha256RsaOaep_Sign", "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign", "Aes256Sha256RsaPss_SignAndEncrypt",
]  # fmt: skip
"""The policies OPC 10000-7 still recommends; Basic128Rsa15 and Basic256 are deprecated and not offered."""

SECURE_POLICIES: tuple[SecurityPolicy, ...] = (
    "Basic256Sha256_SignAndEncrypt", "Aes256Sha256RsaPss_SignAndEncrypt", "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Basic256Sha256_Sign", "Aes256Sha256RsaPss_Sign", "Aes128Sha256RsaOaep_Sign",
)  # fmt: skip


class HmiConfig(_Strict):
    enabled: bool = True
    endpoint: str = "opc.tcp://127.0.0.1:4840/lineinspect/"
    security: list[SecurityPolicy] = Field(default_factory=lambda: list(SECURE_POLICIES), min_length=1)
    allow_unsecured: bool = Field(False, description="also SecurityPolicy None: commissioning only, warned at start")
    pki_dir: Path | None = Field(None, description="server certificate, trusted/, rejected/ (default: by the journal)")
    users_file: Path | None = Field(None, description="users and roles; default beside the journal")
    max_sessions: int = Field(20, ge=1)
    metrics: str | None = Field("127.0.0.1:9464", description="host:port of the Prometheus /metrics endpoint; "
                                "empty: none")  # fmt: skip

    @field_validator("metrics")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if not value:
            return None
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"must look like host:port, got {value!r}")
        return value


    @field_validator("endpoint")
    @classmethod
    def _opc_tcp_url(cls, value: str) -> str:
        """Checked here, where a bad value is one line naming the key, not later in the HMI process."""
        url = urlparse(value)
        try:
            port = url.port
        except ValueError:  # a port that is not a number, or out of range
            port = None
        if url.scheme != "opc.tcp" or not url.hostname or port is None:
            raise ValueError(f"must look like opc.tcp://host:port/path, got {value!r}")
        return value


class DeadlineConfig(_Strict):
    write_margin_ms: float = Field(10.0, gt=0, description="journal fsync + S7 write, pessimistic")
    plc_cycle_ms: float = Field(4.0, gt=0, description="a typical PLC cycle: the decision comes one cycle late")
    plc_max_cycle_ms: float = Field(20.0, gt=0, description="the PLC's longest cycle: a read's values are no older")
    trigger_latency_ms: float = Field(
        5.0, ge=0, description="longest photo-eye edge → ring entry (period of the PLC task that writes it)")
    min_part_pitch_counts: int = Field(300, gt=0, description="smallest trigger-to-trigger distance")


class LineConfig(_Strict):
    plc: Snap7PlcConfig = Snap7PlcConfig()
    camera: Annotated[StreamCameraConfig | PylonCameraConfig, Field(discriminator="type")] = (
        StreamCameraConfig()
    )
    match: MatchConfig = MatchConfig()
    inference: Annotated[RayInferenceConfig | LocalInferenceConfig, Field(discriminator="type")] = (
        RayInferenceConfig()
    )
    journal: JournalConfig = JournalConfig()
    hmi: HmiConfig = HmiConfig()
    deadline: DeadlineConfig = DeadlineConfig()


def load_config(path: Path) -> LineConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, object], *, source: str = "config") -> LineConfig:
    try:
        return LineConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{source}: {key}: {err['msg']}{more}") from exc

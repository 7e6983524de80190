"""System configuration: which components run, who may command them, where the gateway listens.

Loaded once from TOML, validated by pydantic, and immutable afterwards (frozen models).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from state.errors import ConfigurationError

DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"
DEFAULT_SYSTEM_FILE = DEFAULTS_DIR / "system.toml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: The CCD processor's class, which takes the ``[overload]`` policy.
PROCESSOR_CLASS = "base.prompt.ccd_processor:CcdProcessor"
#: Node roles of a deployment: the mountain, the base/archive centre, batch reprocessing.
ROLES: tuple[str, ...] = ("summit", "base", "batch")


class ComponentConfig(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    #: ``module:Class`` of the component (a :class:`state.controller.Controller` subclass).
    cls: str = Field(alias="class", pattern=r"^[\w.]+:\w+$")
    #: The role of the nodes it runs on when ``[placement] by_role`` is set; default: ``summit``
    #: for classes under ``summit.``, else ``base``.
    role: Literal["summit", "base", "batch"] | None = None
    authorized: tuple[str, ...] = ()
    num_cpus: float = Field(default=0.0, ge=0)
    max_restarts: int = Field(default=3, ge=-1)
    queue_size: int = Field(default=16, ge=1)
    command_timeout: float = Field(default=60.0, gt=0)
    settings: dict[str, Any] = Field(default_factory=dict)

    @property
    def placement_role(self) -> str:
        """The role this component is placed by: its ``role``, else its package's side."""
        return self.role or ("summit" if self.cls.startswith("summit.") else "base")


class PlacementConfig(_Frozen):
    """Where components run on a multi-node Ray cluster.

    With ``by_role``, a component asks for a sliver of the custom resource
    ``dmcs_role_<role>`` (``actors.runtime.role_resource``), so Ray places it only on nodes
    started with that resource (``ray start --resources '{"dmcs_role_base": 1000}'``); the
    event bus goes with the base components. The embedded single-node Ray offers every role,
    so the default deployment runs everything on its one node either way.
    """

    by_role: bool = False


#: The component class whose entry is the template of the Association partitions.
ASSOCIATION_CLASS = "base.prompt.association:Association"
#: The component class whose entries route CCD results to the partitions.
PROCESSOR_CLASS = "base.prompt.ccd_processor:CcdProcessor"


class AssociationConfig(_Frozen):
    """How prompt association scales out (docs/architecture.md, "Association").

    ``partitions`` Association actors share the sky by HEALPix tile
    (``algorithms.partition``); each CCD goes to the owner of its footprint centre's tile.
    1 is one Association actor, as before partitions existed.
    """

    partitions: int = Field(default=1, ge=1, le=64)
    #: HEALPix order of the tiles dealt to partitions (``algorithms.partition.REGION_ORDER``,
    #: batch reprocessing's: 0.46° tiles, ~45 per LSSTCam visit); a finer order spreads a
    #: small camera's few CCDs too.
    tile_order: int = Field(default=7, ge=0, le=16)


def partition_name(name: str, partition: int) -> str:
    """The component name of an Association partition: the template's name for partition 0
    (so one partition is named as before), ``<name><k>`` for the others."""
    return name if partition == 0 else f"{name}{partition}"


class OverloadConfig(_Frozen):
    """What the processor pool does when it falls behind (``[overload]`` of the system file).

    ``fifo``: every CCD in arrival order, however late (latency grows without bound while the
    pool cannot keep up). ``newest_first``: while the backlog (the age of the oldest pending
    ingested CCD, or the projected time to finish the pending ones) exceeds
    ``latency_budget``, the newest visits go first and the CCDs older than the budget are
    deferred to the daytime catch-up (``dmcs reprocess --catch-up``), recorded with a reason.
    """

    policy: Literal["newest_first", "fifo"] = "fifo"
    #: Seconds from ingest within which a CCD's alerts are wanted (LSE-61 OTT1: 60 s).
    latency_budget: float = Field(default=60.0, gt=0)


class GatewayConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    tokens_file: Path = Path("tokens.toml")
    max_frame_bytes: int = Field(default=1 << 20, ge=1024)
    #: Events queued per WebSocket client before the oldest are dropped.
    client_queue: int = Field(default=2_000, ge=10)
    #: Identities that may publish batch reprocessing telemetry (``dmcs reprocess --url``).
    batch_identities: tuple[str, ...] = ("batch", "operator")


#: The environment variable that names the system's PostgreSQL DSN (every dmcs command).
DSN_ENV = "DMCS_DATABASE_DSN"


def check_dsn(dsn: str) -> str:
    """``dsn``, or ``ConfigurationError`` unless it is a PostgreSQL URL whose ports are numbers
    (``postgresql://user:pw@host:port/db``, several ``host:port`` or a socket ``?host=/dir``).

    A DSN that cannot name a server is refused here, at once; one that names a server not
    (yet) up is waited for by whoever connects.
    """
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(
            "the database DSN must be a postgresql://user:password@host:port/dbname URL"
        )
    hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    for host in filter(None, hosts.split(",")):
        port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host else ""
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigurationError(f"the database DSN's port {port!r} is not 1..65535")
    return dsn


class DatabaseConfig(_Frozen):
    #: Empty: dmcs starts its own embedded PostgreSQL under ``data_dir``.
    dsn: str = ""

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        if value:
            try:
                check_dsn(value)
            except ConfigurationError as e:
                raise ValueError(str(e)) from e
        return value


class SystemConfig(_Frozen):
    name: str = "dmcs"
    data_dir: Path = Path("var")
    heartbeat_interval: float = Field(default=1.0, gt=0)
    #: Cores of the embedded Ray lent to batch reprocessing (``dmcs reprocess --address``).
    batch_slots: int = Field(default=0, ge=0)
    #: Seconds start-up waits for each of Ray, PostgreSQL and the components to come up.
    startup_timeout: float = Field(default=120.0, gt=0)
    gateway: GatewayConfig = GatewayConfig()
    database: DatabaseConfig = DatabaseConfig()
    placement: PlacementConfig = PlacementConfig()
    association: AssociationConfig = AssociationConfig()
    overload: OverloadConfig = OverloadConfig()
    components: tuple[ComponentConfig, ...] = ()

    @field_validator("components")
    @classmethod
    def _unique_names(cls, value: tuple[ComponentConfig, ...]) -> tuple[ComponentConfig, ...]:
        names = [c.name for c in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"component names must be unique; repeated: {', '.join(duplicates)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _overload_to_processors(cls, data: Any) -> Any:
        """Hand ``[overload]`` to every CCD processor whose settings do not set their own."""
        if not isinstance(data, dict) or not isinstance(data.get("components"), list | tuple):
            return data
        overload = data.get("overload", {})
        components = [
            {**c, "settings": {"overload": overload, **(c.get("settings") or {})}}
            if isinstance(c, dict) and c.get("class") == PROCESSOR_CLASS
            else c
            for c in data["components"]
        ]
        return {**data, "components": components}

    def component(self, name: str) -> ComponentConfig:
        for c in self.components:
            if c.name == name:
                return c
        raise ConfigurationError(f"no component named {name!r} in the system configuration")


def partitioned(config: SystemConfig) -> SystemConfig:
    """``config`` with its Association entry made ``[association] partitions`` actors and its
    CCD processors told the count and tile order (``association_partitions``,
    ``association_tile_order``). Entries already partitioned (settings with ``partition``) and
    processors already told are left as they are."""
    n, order = config.association.partitions, config.association.tile_order
    if n == 1:
        return config
    components: list[ComponentConfig] = []
    for spec in config.components:
        if spec.cls == ASSOCIATION_CLASS and "partition" not in spec.settings:
            for k in range(n):
                settings = {**spec.settings, "partition": k, "partitions": n}
                name = partition_name(spec.name, k)
                components.append(spec.model_copy(update={"name": name, "settings": settings}))
        elif spec.cls == PROCESSOR_CLASS and "association_partitions" not in spec.settings:
            settings = {
                **spec.settings,
                "association_partitions": n,
                "association_tile_order": order,
            }
            components.append(spec.model_copy(update={"settings": settings}))
        else:
            components.append(spec)
    return config.model_copy(update={"components": tuple(components)})


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigurationError(f"configuration file {path} does not exist") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"configuration file {path} is not valid TOML: {e}") from e
    except OSError as e:
        raise ConfigurationError(f"configuration file {path} cannot be read: {e}") from e


def load_system_config(
    path: Path | None = None, *, gateway_port: int | None = None, **overrides: Any
) -> SystemConfig:
    """Read and validate a system file; relative paths in it are taken from its folder.

    ``gateway_port`` (``dmcs run --port``) is validated with the file, by the same field.
    """
    path = (path or DEFAULT_SYSTEM_FILE).resolve()
    raw = read_toml(path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if gateway_port is not None:
        gateway = raw.get("gateway")
        raw["gateway"] = {**(gateway if isinstance(gateway, dict) else {}), "port": gateway_port}
    try:
        config = SystemConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigurationError(f"invalid system configuration {path}:\n{e}") from e
    tokens = config.gateway.tokens_file
    if not tokens.is_absolute():
        tokens = path.parent / tokens
    return partitioned(
        config.model_copy(
            update={"gateway": config.gateway.model_copy(update={"tokens_file": tokens})}
        )
    )


def load_tokens(path: Path) -> dict[str, str]:
    """Bearer token → identity, from ``[tokens]`` in a TOML file."""
    tokens = read_toml(path).get("tokens")
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in tokens.items()
    ):
        raise ConfigurationError(f'{path}: expected a [tokens] table of token = "identity"')
    return dict(tokens)

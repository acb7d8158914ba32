"""AgentSettings: one agent's configuration, read from its agent.properties."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from common.addresses import DEFAULT_PORT
from common.errors import PropertiesError, ValidationError
from common.fields import word_fault
from common.hostlist import HostList, parse_host_value
from common.properties import AgentProperties, remove_stale_temp_files
from common.retry import Backoff
from common.tokens import JoinToken, parse_token

# Keys of agent.properties this daemon reads; every other key is kept untouched.
HOST = "host"
PORT = "port"
GUID = "guid"
NAME = "name"
TYPE = "type"
ZONE = "zone"
CLUSTER = "cluster"
CHECK_INTERVAL = "host.lb.check.interval"
CONNECT_TIMEOUT = "connect.timeout"
BACKOFF_INITIAL = "failover.backoff.initial"
BACKOFF_MAX = "failover.backoff.max"
TOKEN = "token"  # a join token, until the agent has enrolled (then the line is removed)

DEFAULT_TYPE = "routing"
DEFAULT_ZONE = "default"
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_MAX = 10.0


@dataclass(frozen=True)
class AgentSettings:
    path: Path
    host_list: HostList
    port: int
    guid: str
    name: str
    host_type: str
    zone: str
    cluster: str
    check_interval: int | None  # the agent's own override; None: follow the servers
    connect_timeout: float
    backoff_initial: float
    backoff_max: float
    token: JoinToken | None = None

    @property
    def backoff(self) -> Backoff:
        """Between failover passes: full jitter, so a fleet that lost its server spreads out."""
        return Backoff(self.backoff_initial, self.backoff_max, full_jitter=True)

    @classmethod
    def from_properties(cls, path: Path | str) -> AgentSettings:
        """Read the file; a missing guid is generated and persisted. Raises PropertiesError
        naming the file and line of a bad value."""
        props = AgentProperties.load(path)
        remove_stale_temp_files(props.path)
        generated = not props.get(GUID)
        if generated:
            props.set(GUID, str(uuid.uuid4()))
        settings = cls._parse(props)  # a bad file raises here, before anything is written
        if generated:
            try:
                props.save()
            except OSError as exc:
                raise PropertiesError(
                    f"{props.path}: cannot write the generated guid: {exc.strerror or exc}"
                ) from None
        return settings

    @classmethod
    def _parse(cls, props: AgentProperties) -> AgentSettings:
        def fail(key: str, reason: str) -> PropertiesError:
            return PropertiesError(f"{props.where(key)}: {key}: {reason}")

        raw_host = props.get(HOST)
        if not raw_host:
            raise fail(HOST, "missing; set host=<server>[,<server>...] to reach a server")
        try:
            host_list = parse_host_value(raw_host)
        except ValidationError as exc:
            raise fail(HOST, str(exc)) from None

        def number(key: str, default: float, minimum: float, whole: bool = False) -> float:
            raw = props.get(key)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = int(raw) if whole else float(raw)
            except ValueError:
                kind = "a whole number" if whole else "a number"
                raise fail(key, f"{raw!r} is not {kind}") from None
            if value < minimum:
                raise fail(key, f"{value} is below the minimum of {minimum}")
            return value

        def word(key: str, default: str) -> str:
            value = (props.get(key) or default).strip()
            fault = word_fault(value, required=False)
            if fault is not None:
                raise fail(key, fault)
            return value

        port = int(number(PORT, DEFAULT_PORT, 1, whole=True))
        if port > 65535:
            raise fail(PORT, f"{port} is out of range 1-65535")
        override = props.get(CHECK_INTERVAL)
        token = None
        raw_token = props.get(TOKEN)
        if raw_token:
            try:
                token = parse_token(raw_token)
            except ValidationError as exc:
                raise PropertiesError(f"{props.where(TOKEN)}: {exc}") from None
        return cls(
            path=props.path,
            host_list=host_list,
            port=port,
            guid=word(GUID, ""),
            name=word(NAME, socket.gethostname()),
            host_type=word(TYPE, DEFAULT_TYPE),
            zone=word(ZONE, DEFAULT_ZONE),
            cluster=word(CLUSTER, ""),
            check_interval=(
                int(number(CHECK_INTERVAL, 0, 0, whole=True)) if override is not None else None
            ),
            connect_timeout=number(CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, 0.1),
            backoff_initial=number(BACKOFF_INITIAL, DEFAULT_BACKOFF_INITIAL, 0.01),
            backoff_max=number(BACKOFF_MAX, DEFAULT_BACKOFF_MAX, 0.01),
            token=token,
        )

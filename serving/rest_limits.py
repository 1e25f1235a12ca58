"""What the REST port allows a client: connections, threads, time per phase, decodes, hosts.

The `--rest_api_*` flags fill one `RestLimits`. The Host header is checked against loopback
names (and the bound address, and `allowed_hosts`), so a page whose DNS name is rebound to this
machine cannot drive the server from a visitor's browser.
"""

from __future__ import annotations

import dataclasses

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_HOST = "*"


def host_name(header: str) -> str:
    """The host of a Host header, lowercase, without its port (`[::1]:8501` -> `[::1]`)."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end > 0 else header
    return header.split(":", 1)[0].rstrip(".")


def _normal(host: str) -> str:
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):  # a bare IPv6 address
        host = f"[{host}]"
    return host


@dataclasses.dataclass(frozen=True)
class RestLimits:
    """The REST port's limits (the `--rest_api_*` flags).

    Args:
        threads: int. Worker threads; each serves one connection at a time.
        max_connections: int. Open connections (served or waiting for a thread); one more is
            answered 503 and closed.
        header_timeout_ms: int. Time a client has to send a request line and its headers (an
            open connection that sends nothing is closed then).
        body_timeout_ms: int. Time a client has to send a request's body, and to take its
            answer.
        max_concurrent_decodes: int. JSON bodies decoded at once; others wait, until their
            request's deadline (then 503).
        allowed_hosts: tuple of str. Host header names accepted besides loopback's (no port;
            `*` accepts any).
    """

    threads: int = 16
    max_connections: int = 64
    header_timeout_ms: int = 10000
    body_timeout_ms: int = 60000
    max_concurrent_decodes: int = 2
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "allowed_hosts" and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"RestLimits.{field.name} must be an integer >= 1. "
                    f"Received: {field.name}={value!r}"
                )
        if self.max_connections < self.threads:
            raise ValueError(
                "RestLimits.max_connections must be >= threads. Received: "
                f"max_connections={self.max_connections}, threads={self.threads}"
            )
        object.__setattr__(self, "allowed_hosts", tuple(_normal(h) for h in self.allowed_hosts))

    def with_host(self, host: str) -> RestLimits:
        """These limits, also accepting the address the port is bound to (unless a wildcard)."""
        if host in ("", "0.0.0.0", "::"):
            return self
        return dataclasses.replace(self, allowed_hosts=(*self.allowed_hosts, host))

    def host_allowed(self, header: str) -> bool:
        """Whether a request's Host header names this server."""
        if ANY_HOST in self.allowed_hosts:
            return True
        return host_name(header) in LOOPBACK_HOSTS + self.allowed_hosts


DEFAULT_LIMITS = RestLimits()

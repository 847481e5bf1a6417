"""The national clouds: Graph root, sign-in authority host and app-only scope (GRAPH.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from batch.errors import ConfigError

__all__ = ["CLOUDS", "Cloud", "Endpoints", "resolve_endpoints"]


@dataclass(frozen=True, slots=True)
class Cloud:
    """One Microsoft cloud's endpoints."""

    name: str
    graph_root: str
    authority_host: str

    @property
    def scope(self) -> str:
        """The app-only `.default` scope of this cloud's Graph."""
        return f"{self.graph_root}/.default"


CLOUDS: Final[dict[str, Cloud]] = {
    c.name: c
    for c in (
        Cloud("global", "https://graph.microsoft.com", "https://login.microsoftonline.com"),
        Cloud("usgov", "https://graph.microsoft.us", "https://login.microsoftonline.us"),
        Cloud("usgovdod", "https://dod-graph.microsoft.us", "https://login.microsoftonline.us"),
        Cloud("china", "https://microsoftgraph.chinacloudapi.cn", "https://login.chinacloudapi.cn"),
    )
}

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where this run talks to: Graph root (no version), authority host, token scope."""

    cloud: str
    graph_root: str
    authority_host: str
    scope: str


def _check_url(url: str, what: str, *, allow_loopback_http: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url.rstrip("/")
    if parts.scheme == "http" and allow_loopback_http and parts.hostname in _LOOPBACK:
        return url.rstrip("/")
    allowed = "https (plain http only for 127.0.0.1/localhost)" if allow_loopback_http else "https"
    raise ConfigError(f"{what} {url!r} must be an {allowed} URL")


def resolve_endpoints(
    cloud: str = "global", *, graph_url: str | None = None, authority_host: str | None = None
) -> Endpoints:
    """The endpoints for `--cloud`, with `--graph-url` / `--authority-host` overriding them."""
    try:
        base = CLOUDS[cloud.lower()]
    except KeyError:
        raise ConfigError(f"unknown cloud {cloud!r}; choose one of {', '.join(CLOUDS)}") from None
    root = _check_url(graph_url, "--graph-url", allow_loopback_http=True) if graph_url else None
    host = (
        _check_url(authority_host, "--authority-host", allow_loopback_http=False)
        if authority_host
        else None
    )
    graph_root = root or base.graph_root
    # A custom Graph URL still asks for the cloud's scope unless it is a different host entirely:
    # tokens are issued for the resource, so the scope follows the Graph root that is called.
    scope = f"{graph_root}/.default" if root else base.scope
    return Endpoints(base.name, graph_root, host or base.authority_host, scope)

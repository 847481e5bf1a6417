"""The national clouds: Graph root, sign-in authority host and app-only scope (GRAPH.md)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address
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

_VERSIONS: Final = ("v1.0", "beta")


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where this run talks to: Graph root (no version), authority host, token scope."""

    cloud: str
    graph_root: str
    authority_host: str
    scope: str

    def authority(self, tenant: str) -> str:
        """The sign-in authority URL for a tenant (id, domain, or `organizations`)."""
        return f"{self.authority_host}/{tenant}"


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _shown(url: str) -> str:
    # A URL with user:password@ must not repeat the password in an error message.
    scheme, at, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}" if at and "@" in rest else url


def _check_url(url: str, what: str, *, allow_loopback_http: bool) -> str:
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"{what} {_shown(url)!r} is not a valid URL") from None
    secure = parts.scheme == "https" and bool(host)
    loopback_http = (
        allow_loopback_http and parts.scheme == "http" and host is not None and _is_loopback(host)
    )
    if not (secure or loopback_http):
        allowed = (
            "https (plain http only for loopback addresses)" if allow_loopback_http else "https"
        )
        raise ConfigError(f"{what} {_shown(url)!r} must be an {allowed} URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{what} {_shown(url)!r} must not carry a query, fragment or user name")
    return url.strip().rstrip("/")


def resolve_endpoints(
    cloud: str = "global", *, graph_url: str | None = None, authority_host: str | None = None
) -> Endpoints:
    """The endpoints for `--cloud`, with `--graph-url` / `--authority-host` overriding them."""
    try:
        base = CLOUDS[cloud.lower()]
    except KeyError:
        raise ConfigError(f"unknown cloud {cloud!r}; choose one of {', '.join(CLOUDS)}") from None
    root = _check_url(graph_url, "--graph-url", allow_loopback_http=True) if graph_url else None
    if root and root.rsplit("/", 1)[-1].lower() in _VERSIONS:
        raise ConfigError(
            f"--graph-url {graph_url!r} must be the Graph root, without /v1.0 or /beta"
        )
    host = (
        _check_url(authority_host, "--authority-host", allow_loopback_http=False)
        if authority_host
        else None
    )
    if host and urlsplit(host).path:
        # The tenant is appended to the host; a path here would end up in every authority URL.
        raise ConfigError(
            f"--authority-host {authority_host!r} must be only scheme and host, e.g. "
            f"{base.authority_host} (the tenant comes from AZURE_TENANT_ID)"
        )
    graph_root = root or base.graph_root
    # Tokens are issued for the resource that is called: the scope follows the Graph root.
    scope = f"{graph_root}/.default" if root else base.scope
    return Endpoints(base.name, graph_root, host or base.authority_host, scope)

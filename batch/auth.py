"""Credential sources turned into a token provider for the Graph client."""

from __future__ import annotations

from typing import Protocol

__all__ = ["StaticTokenProvider", "TokenProvider"]


class TokenProvider(Protocol):
    """Something that hands out bearer tokens for Graph, refreshing them when asked."""

    async def token(self, *, force_refresh: bool = False) -> str:
        """A valid access token; `force_refresh` after Graph answered 401 to the last one."""
        ...


class StaticTokenProvider:
    """A token obtained elsewhere (`GRAPH_ACCESS_TOKEN`): it cannot be refreshed."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self, *, force_refresh: bool = False) -> str:
        """The same token every time (a forced refresh cannot produce a new one)."""
        return self._token

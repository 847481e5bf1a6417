"""The national-cloud table and the `--cloud` / `--graph-url` / `--authority-host` rules."""

from __future__ import annotations

import pytest

from batch.clouds import CLOUDS, Endpoints, resolve_endpoints
from batch.errors import ConfigError

# GRAPH.md "National clouds", copied by hand so that a typo in the table is caught here.
GRAPH_MD = {
    "global": (
        "https://graph.microsoft.com",
        "https://login.microsoftonline.com",
        "https://graph.microsoft.com/.default",
    ),
    "usgov": (
        "https://graph.microsoft.us",
        "https://login.microsoftonline.us",
        "https://graph.microsoft.us/.default",
    ),
    "usgovdod": (
        "https://dod-graph.microsoft.us",
        "https://login.microsoftonline.us",
        "https://dod-graph.microsoft.us/.default",
    ),
    "china": (
        "https://microsoftgraph.chinacloudapi.cn",
        "https://login.chinacloudapi.cn",
        "https://microsoftgraph.chinacloudapi.cn/.default",
    ),
}


def test_the_table_has_exactly_the_documented_clouds() -> None:
    assert set(CLOUDS) == set(GRAPH_MD)


@pytest.mark.parametrize("cloud", sorted(GRAPH_MD))
def test_each_cloud_maps_to_its_documented_endpoints(cloud: str) -> None:
    graph_root, authority_host, scope = GRAPH_MD[cloud]
    assert resolve_endpoints(cloud) == Endpoints(cloud, graph_root, authority_host, scope)
    assert CLOUDS[cloud].scope == scope


def test_default_is_global_and_names_ignore_case() -> None:
    assert resolve_endpoints() == resolve_endpoints("global")
    assert resolve_endpoints("USGov").cloud == "usgov"


def test_unknown_cloud_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown cloud 'gcc'.*global, usgov, usgovdod, china"):
        resolve_endpoints("gcc")


def test_authority_url_appends_the_tenant() -> None:
    assert resolve_endpoints("china").authority("contoso.onmicrosoft.com") == (
        "https://login.chinacloudapi.cn/contoso.onmicrosoft.com"
    )


def test_graph_url_override_sets_root_and_scope_keeps_authority() -> None:
    endpoints = resolve_endpoints("usgov", graph_url="https://graph.proxy.example/")
    assert endpoints.graph_root == "https://graph.proxy.example"
    assert endpoints.scope == "https://graph.proxy.example/.default"
    assert endpoints.authority_host == "https://login.microsoftonline.us"
    assert endpoints.cloud == "usgov"


def test_authority_host_override_keeps_graph() -> None:
    endpoints = resolve_endpoints(authority_host="https://127.0.0.1:8443/")
    assert endpoints.authority_host == "https://127.0.0.1:8443"
    assert endpoints.graph_root == "https://graph.microsoft.com"
    assert endpoints.scope == "https://graph.microsoft.com/.default"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:8765", id="ipv4-loopback"),
        pytest.param("http://127.1.2.3:8765", id="ipv4-loopback-range"),
        pytest.param("http://[::1]:8765", id="ipv6-loopback"),
        pytest.param("http://localhost:8765", id="localhost"),
        pytest.param("https://graph.example.org", id="https"),
    ],
)
def test_graph_url_allows_https_and_loopback_http(url: str) -> None:
    assert resolve_endpoints(graph_url=url).graph_root == url


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://graph.example.org", id="http-remote"),
        pytest.param("http://10.0.0.1:8765", id="http-private"),
        pytest.param("http://localhost.evil.example", id="http-lookalike"),
        pytest.param("ftp://127.0.0.1", id="ftp"),
        pytest.param("127.0.0.1:8765", id="no-scheme"),
        pytest.param("https://", id="no-host"),
    ],
)
def test_graph_url_refuses_anything_else(url: str) -> None:
    with pytest.raises(ConfigError, match=r"--graph-url .* must be an https"):
        resolve_endpoints(graph_url=url)


@pytest.mark.parametrize("suffix", ["/v1.0", "/beta", "/BETA/"])
def test_graph_url_must_not_carry_the_version(suffix: str) -> None:
    with pytest.raises(ConfigError, match=r"without /v1\.0 or /beta"):
        resolve_endpoints(graph_url=f"https://graph.microsoft.com{suffix}")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:8443", id="http-even-loopback"),
        pytest.param("http://login.example.org", id="http-remote"),
        pytest.param("login.microsoftonline.com", id="no-scheme"),
    ],
)
def test_authority_host_must_be_https(url: str) -> None:
    with pytest.raises(ConfigError, match=r"--authority-host .* must be an https URL"):
        resolve_endpoints(authority_host=url)


def test_authority_host_must_not_have_a_path() -> None:
    with pytest.raises(ConfigError, match=r"only scheme and host.*AZURE_TENANT_ID"):
        resolve_endpoints(authority_host="https://login.microsoftonline.com/contoso")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://graph.example.org?x=1", id="query"),
        pytest.param("https://user:pw@graph.example.org", id="credentials"),
    ],
)
def test_urls_carry_no_query_or_credentials(url: str) -> None:
    with pytest.raises(ConfigError, match="must not carry") as caught:
        resolve_endpoints(graph_url=url)
    assert "pw" not in str(caught.value)


def test_a_password_in_a_refused_url_is_not_repeated() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_endpoints(authority_host="http://admin:s3cret@login.example.org")
    assert "s3cret" not in str(caught.value)
    assert "login.example.org" in str(caught.value)


def test_a_bad_port_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid URL"):
        resolve_endpoints(graph_url="https://127.0.0.1:http")

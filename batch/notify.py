"""Webhook notifications: one POST per job run to Teams, Slack or any JSON receiver.

Decisions worth knowing:

- The URL is a secret (a Teams workflow URL carries its signature in the query, a Slack URL is
  the credential itself), so the job file only names the variable holding it, and no message
  here ever contains it: errors name the variable and the exception's type or HTTP status only.
- Plain `http://` only for loopback addresses, like `--graph-url`.
- Bounded: a few seconds per attempt, three attempts with exponential backoff (tenacity) on
  connection errors, timeouts, 429 and 5xx. A notification that still fails is logged by the
  caller and never changes the job's exit code: the run's outcome is already on disk.
- Payloads: `teams` an Adaptive Card message as a Teams workflow ("When a Teams webhook request
  is received") accepts it; `slack` `{"text", "blocks"}` for an incoming webhook; `json` the
  roll-up object itself.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx
import tenacity

from batch import __version__
from batch.errors import ConfigError

__all__ = [
    "WEBHOOK_FORMATS",
    "NotifyError",
    "build_payload",
    "post_webhook",
    "wants_notification",
    "webhook_url",
]

WebhookFormat = Literal["teams", "slack", "json"]
WEBHOOK_FORMATS: Final = ("teams", "slack", "json")
#: Row outcomes that make `notify_on = "problems"` send even when the exit code is 0.
PROBLEM_OUTCOMES: Final = ("failed", "invalid", "conflict")

_TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)
_ATTEMPTS: Final = 3
_SLACK_TEXT_MAX: Final = 2900  # Slack cuts a section's text at 3000 characters
_SLACK_FIELDS_MAX: Final = 10  # fields per section block


class NotifyError(Exception):
    """A notification could not be delivered; the message never holds the URL."""


def webhook_url(variable: str, env: Mapping[str, str]) -> str:
    """The webhook URL from the variable `variable`; `ConfigError` (without the value) if bad."""
    value = env.get(variable, "").strip()
    if not value:
        raise ConfigError(f"[notify] webhook_env names {variable}, which is not set")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"[notify] ${variable} is not a valid URL") from None
    if parts.scheme == "https" and host:
        return value
    if parts.scheme == "http" and host and _is_loopback(host):
        return value
    raise ConfigError(
        f"[notify] ${variable} must be an https URL (plain http only for loopback addresses)"
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def wants_notification(on: str, rollup: Mapping[str, Any]) -> bool:
    """`always`, or `problems`: exit code not 0, or any failed, invalid or conflict row."""
    if on == "always":
        return True
    counts = rollup.get("counts") or {}
    return int(rollup.get("exit_code", 0)) != 0 or any(
        int(counts.get(k, 0)) for k in PROBLEM_OUTCOMES
    )


def _tenants(rollup: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    tenants = rollup.get("tenants")
    if isinstance(tenants, list):
        return tenants
    return [{"tenant": "", **rollup}]  # a single-tenant job: the job is the one "tenant"


def _tenant_text(tenant: Mapping[str, Any]) -> str:
    counts = tenant.get("counts") or {}
    files = tenant.get("files") or []
    rows = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "no rows"
    text = f"exit {tenant.get('exit_code', '?')}: {len(files)} file{'s' * (len(files) != 1)}"
    text += f"; rows: {rows}"
    if tenant.get("error"):
        text += f"; {tenant['error']}"
    return text


def _title(rollup: Mapping[str, Any]) -> str:
    code = int(rollup.get("exit_code", 0))
    verdict = "ok" if code == 0 else "needs attention"
    return f"autopilot-batch job {rollup.get('job', '?')}: {verdict} (exit {code})"


def build_payload(fmt: str, rollup: Mapping[str, Any]) -> dict[str, Any]:
    """The body of the POST for `fmt` (`teams`, `slack` or `json`) from a job's roll-up."""
    summary = str(rollup.get("summary", ""))
    tenants = _tenants(rollup)
    if fmt == "json":
        return dict(rollup)
    if fmt == "slack":
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": _title(rollup)[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": summary[:_SLACK_TEXT_MAX]}},
        ]
        fields = [
            {
                "type": "mrkdwn",
                "text": f"*{t.get('tenant') or rollup.get('job', '')}*\n{_tenant_text(t)}"[:1900],
            }
            for t in tenants
        ]
        blocks.extend(
            {"type": "section", "fields": fields[start : start + _SLACK_FIELDS_MAX]}
            for start in range(0, len(fields), _SLACK_FIELDS_MAX)
        )
        return {"text": summary, "blocks": blocks}
    if fmt == "teams":
        code = int(rollup.get("exit_code", 0))
        facts = [
            {"title": str(t.get("tenant") or rollup.get("job", "")), "value": _tenant_text(t)}
            for t in tenants
        ]
        card: dict[str, Any] = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "msteams": {"width": "Full"},
            "body": [
                {
                    "type": "TextBlock",
                    "text": _title(rollup),
                    "weight": "Bolder",
                    "size": "Medium",
                    "color": "Good" if code == 0 else "Attention",
                    "wrap": True,
                },
                {"type": "TextBlock", "text": summary, "wrap": True},
                {"type": "FactSet", "facts": facts},
                {
                    "type": "TextBlock",
                    "text": f"started {rollup.get('started', '')}, ended {rollup.get('ended', '')}",
                    "isSubtle": True,
                    "size": "Small",
                    "wrap": True,
                },
            ],
        }
        return {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": card,
                }
            ],
        }
    raise ValueError(f"unknown webhook format {fmt!r}")  # the job file is checked on load


class _Retryable(Exception):
    """A 429 or 5xx answer: worth another attempt."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def post_webhook(
    url: str,
    payload: Mapping[str, Any],
    *,
    attempts: int = _ATTEMPTS,
    timeout: httpx.Timeout = _TIMEOUT,
    sleep: Callable[[float], None] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """POST `payload` as JSON; returns the HTTP status. Raises `NotifyError` (URL never shown)."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=0.5, max=4),
        retry=tenacity.retry_if_exception_type((httpx.TransportError, _Retryable)),
        reraise=True,
        sleep=sleep or time.sleep,
    )
    headers = {"User-Agent": f"autopilot-batch/{__version__}"}
    try:
        with httpx.Client(timeout=timeout, transport=transport, follow_redirects=False) as client:
            for attempt in retrying:
                with attempt:
                    response = client.post(url, json=payload, headers=headers)
                    if response.status_code == 429 or response.status_code >= 500:
                        raise _Retryable(response.status_code)
                    if response.status_code >= 300:
                        raise NotifyError(f"the receiver answered HTTP {response.status_code}")
                    return response.status_code
    except _Retryable as error:
        raise NotifyError(f"the receiver answered HTTP {error.status} {attempts} times") from None
    except httpx.HTTPError as error:
        # The exception text may hold the URL; its type is enough to act on.
        raise NotifyError(f"{type(error).__name__} after {attempts} attempts") from None
    raise NotifyError("no attempt was made")  # pragma: no cover - attempts >= 1

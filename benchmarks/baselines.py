"""The obvious alternatives to autopilot-batch, as an admin would write them (benchmark 4).

    python benchmarks/baselines.py sequential REQUESTS.jsonl [--graph-url URL]
    python benchmarks/baselines.py gather REQUESTS.jsonl [--graph-url URL] [--retries 3]

REQUESTS.jsonl is the `requests.jsonl` of `autopilot-batch run --dry-run` (method, url, body per
line), so every contender sends exactly the same bodies to the same URLs (`--graph-url` swaps the
root the dry run wrote for the emulator's). The token comes from GRAPH_ACCESS_TOKEN. Prints one
JSON object: requests sent, rows updated and failed, 429s seen.

- `sequential`: one PATCH after another with a plain `httpx.Client`; a row that does not get a
  2xx (429 included) is counted as failed and the loop moves on. This is the usual PowerShell or
  Python script.
- `gather`: every PATCH at once with `asyncio.gather` over one `httpx.AsyncClient` (httpx's default
  pool of 100 connections), no client-side limit; on a 429 the request sleeps `Retry-After`
  (1 s without one) and tries again, up to `--retries` times. Timeouts are generous (60 s) so the
  pool queue itself does not fail rows: the baseline gets the benefit of the doubt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx


def _requests(path: Path, graph_url: str | None) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        requests = [json.loads(line) for line in handle if line.strip()]
    if graph_url:
        for request in requests:
            # The root is everything before the version segment ("/beta/...").
            _, _, rest = request["url"].partition("/beta/")
            request["url"] = f"{graph_url.rstrip('/')}/beta/{rest}"
    return requests


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['GRAPH_ACCESS_TOKEN']}"}


def sequential(requests: list[dict[str, Any]]) -> dict[str, int]:
    """One PATCH after another; anything but 2xx is a failed row."""
    counts: Counter[str] = Counter()
    with httpx.Client(headers=_headers(), timeout=60) as client:
        for request in requests:
            response = client.request(request["method"], request["url"], json=request["body"])
            counts["sent"] += 1
            if response.status_code == 429:
                counts["throttled"] += 1
            counts["updated" if response.is_success else "failed"] += 1
    return dict(counts)


def _retry_after(response: httpx.Response) -> float:
    """The seconds a naive script would read from Retry-After: the first number, else 1.

    Intune may send the header twice (httpx joins them: "2,120") or as an HTTP date.
    """
    first = response.headers.get("Retry-After", "1").split(",")[0].strip()
    try:
        return float(first)
    except ValueError:
        return 1.0


async def gather(requests: list[dict[str, Any]], retries: int) -> dict[str, int]:
    """Every PATCH at once; on 429 sleep Retry-After and retry up to `retries` times."""
    counts: Counter[str] = Counter()

    async def one(client: httpx.AsyncClient, request: dict[str, Any]) -> None:
        for attempt in range(retries + 1):
            response = await client.request(request["method"], request["url"], json=request["body"])
            counts["sent"] += 1
            if response.status_code != 429:
                counts["updated" if response.is_success else "failed"] += 1
                return
            counts["throttled"] += 1
            if attempt < retries:
                counts["retries"] += 1
                await asyncio.sleep(_retry_after(response))
        counts["failed"] += 1

    async with httpx.AsyncClient(headers=_headers(), timeout=60) as client:
        await asyncio.gather(*(one(client, r) for r in requests))
    return dict(counts)


def main() -> int:
    """Run one baseline and print its counts as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["sequential", "gather"])
    parser.add_argument("requests", type=Path)
    parser.add_argument("--graph-url", help="Graph root to send to instead of the dry run's.")
    parser.add_argument("--retries", type=int, default=3)
    args = parser.parse_args()
    requests = _requests(args.requests, args.graph_url)
    if args.kind == "sequential":
        counts = sequential(requests)
    else:
        counts = asyncio.run(gather(requests, args.retries))
    counts.setdefault("failed", 0)
    counts.setdefault("throttled", 0)
    counts.setdefault("updated", 0)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A Python tool using tierstack through `tierstack proxy`: the only change
is the base URL. Run by examples/proxy.rs against a local API and proxy:

    python3 examples/proxy_client.py http://127.0.0.1:8787

Asks for each book twice, waits for the answers to expire, asks again,
and checks how each answer was served (the proxy's `x-cache` header).
"""

import sys
import time

import requests

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8787"
BOOKS = 5


def served(path):
    response = requests.get(f"{BASE}{path}", timeout=10)
    response.raise_for_status()
    book = response.json()
    return response.headers.get("x-cache"), book


def upstream_calls():
    """What the proxy asked the API so far (its fetches, all sources)."""
    stats = requests.get(f"{BASE}/_tierstack/stats", timeout=10).json()
    return sum(
        source["fetches"]
        for name, source in stats["cache"]["sources"].items()
        if not name.endswith(":index")
    )


def main():
    seen = []
    for i in range(BOOKS):
        seen.append(served(f"/books/{i}")[0])
    before = upstream_calls()
    for i in range(BOOKS):
        seen.append(served(f"/books/{i}")[0])
    second = upstream_calls() - before
    print("upstream calls of the second run:", second)
    if second != 0:
        return 1
    time.sleep(1.3)  # the API's answers live one second
    for i in range(BOOKS):
        how, book = served(f"/books/{i}")
        assert book["id"] == i, book
        seen.append(how)
    expected = ["MISS"] * BOOKS + ["HIT"] * BOOKS + ["REVALIDATED"] * BOOKS
    print("served:", " ".join(seen))
    if seen != expected:
        print("expected:", " ".join(expected), file=sys.stderr)
        return 1
    health = requests.get(f"{BASE}/_tierstack/health", timeout=10).json()
    stats = requests.get(f"{BASE}/_tierstack/stats", timeout=10).json()
    revalidated = sum(
        source["revalidated"]
        for name, source in stats["cache"]["sources"].items()
        if not name.endswith(":index")
    )
    print("health:", health["status"], "| revalidated:", revalidated)
    if revalidated != BOOKS:
        return 1
    return 0 if health["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())

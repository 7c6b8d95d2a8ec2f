"""The Emporion targets of bench/run.py as they are sold: their config files, the source they run
from (the working tree or another git revision), their PostgreSQL database, and the processes whose
CPU counts as theirs.

Every target runs ``emporion serve`` in its own process and data directory, in front of the same
fake upstream. A priced target's model has a price, so every request holds and settles real money
against an organization with a large free credit; the unpriced one costs nothing. Tier limits are
set far above what the load reaches, so the bench measures the gateway and never a 429.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg
import httpx

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
REDIS_URL = "redis://127.0.0.1:6379/0"
PROMPT_USD, COMPLETION_USD = "0.0000025", "0.00001"  # per token: $2.50 and $10 per million
PROBE_BODY = {"model": "fake", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


@dataclass(frozen=True)
class Target:
    """One Emporion set-up to measure."""

    priced: bool = True  # the model has a price: every request is held and settled
    store: Literal["sqlite", "postgresql"] = "sqlite"  # postgresql: with Redis for the limits
    rev: str | None = None  # a git revision (its src/ is extracted); None: the working tree
    sqlite_synchronous: str | None = None  # "normal": as durable as revisions before da6014f (default: the code's own)
    observed: bool = True  # False: the request log and metrics switched off (what they cost is the difference)

    def name(self, short_sha: str | None) -> str:
        where = "emporion" if short_sha is None else f"emporion@{short_sha}"
        store = "SQLite" if self.store == "sqlite" else "PG+Redis"
        if self.sqlite_synchronous:
            store += f" {self.sqlite_synchronous.upper()}"
        unobserved = "" if self.observed else ", no log or metrics"
        return f"{where}, {store}, money {'on' if self.priced else 'off'}{unobserved}"


def short_sha(rev: str) -> str:
    result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", f"{rev}^{{commit}}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"not a revision of this repository: {rev} ({result.stderr.strip()})")
    return result.stdout.strip()


def describe(rev: str | None) -> str:
    """What code a target runs: a commit and its subject, or the working tree and where it stands."""
    if rev is not None:
        sha, subject = _git("log", "-1", "--format=%h%n%s", rev).split("\n", 1)
        return f"{sha}: {subject if len(subject) <= 60 else subject[:59].rsplit(' ', 1)[0] + ' …'}"
    changed = _git("status", "--porcelain", "--", "src")
    return f"the working tree (HEAD {_git('rev-parse', '--short', 'HEAD')}{', src/ with uncommitted changes' if changed else ''})"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def extract_src(rev: str, into: Path) -> Path:
    """``git archive REV src | tar -x``: the revision's package, run with ``PYTHONPATH=<into>/src``."""
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", rev, "src"], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {rev} src failed")
    return into / "src"


def config_toml(target: Target, upstream_url: str, database_url: str | None, slow_upstream_url: str | None = None) -> str:
    """The target's config.toml: model ``fake`` on the fake upstream and, with ``slow_upstream_url``,
    model ``fake-slow`` on the one that answers after a delay, priced (or not) the same way."""
    lines = ["[engine]", "enabled = false", "[embeddings]", "enabled = false"]
    models = [("fake", upstream_url)] + ([("fake-slow", slow_upstream_url)] if slow_upstream_url else [])
    for model, url in models:
        lines += ["[[upstreams]]", f'name = "{model}"', f'base_url = "{url}/v1"', f'[models."{model}"]', f'upstream = "{model}"']
        if target.priced:
            lines.append(f'pricing = {{ prompt = "{PROMPT_USD}", completion = "{COMPLETION_USD}" }}')
    lines += [
        "[metering]",
        'free_credit_usd = "1000000"',
        "[tiers.free]",
        "requests_per_minute = 100000000",
        "tokens_per_minute = 1000000000000",
        "max_concurrent = 100000",
    ]
    if database_url:
        lines += ["[database]", f'url = "{database_url}"']
    elif target.sqlite_synchronous:
        lines += ["[database]", f'sqlite_synchronous = "{target.sqlite_synchronous}"']
    if target.store == "postgresql":
        lines += ["[limits]", f'redis_url = "{REDIS_URL}"']
    if not target.observed:
        lines += ["[request_log]", "enabled = false", "[metrics]", "enabled = false"]
    return "\n".join(lines) + "\n"


def environment(src: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMPORION_")}  # the config file says it all
    env.pop("PYTHONPATH", None)
    if src is not None:
        env["PYTHONPATH"] = str(src)  # ahead of the venv's editable install of the working tree
    return env


def create_key(data_dir: Path, env: dict[str, str]) -> str:
    """An API key of a new organization in the first tier, with the free credit (the first start's
    default organization is the operator's, which has no tier limits: not what customers get)."""
    result = subprocess.run(
        [sys.executable, "-m", "emporion", "keys", "create", "--org", "bench", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    if result.returncode != 0:
        raise SystemExit(f"emporion keys create failed in {data_dir}:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def probe_cost(url: str, key: str) -> float | None:
    """One request, as a check that the target works and charges what it should: the cost it reports."""
    response = httpx.post(url + "/v1/chat/completions", json=PROBE_BODY, headers={"authorization": f"Bearer {key}"}, timeout=30)
    if response.status_code != 200:
        raise SystemExit(f"probe of {url} answered {response.status_code}: {response.text[:500]}")
    return response.json().get("usage", {}).get("cost")


def require_stores() -> None:
    for name, port in (("PostgreSQL", 5432), ("Redis", 6379)):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                raise SystemExit(f"{name} is needed on 127.0.0.1:{port} for the PG+Redis target")


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database() -> str:
    name = f"emporion_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return name


def drop_database(name: str) -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone between listing and reading
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pids(matches) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if matches(cmdline):
                found.append(int(entry.name))
    return found


@dataclass
class StoreCpu:
    """The CPU the stores spend for one target: the PostgreSQL backends connected to its database
    (found by their process titles) and the Redis server (shared: anything else using it counts too).
    A backend that exits inside a measurement takes its CPU with it: the figure is a floor."""

    database: str

    def cpu_s(self) -> float:
        pids = _pids(lambda cmd: cmd.startswith("postgres: ") and f" {self.database} " in cmd)
        pids += _pids(lambda cmd: cmd.startswith("redis-server") and ":6379" in cmd)
        return sum(_cpu_s(pid) for pid in pids)

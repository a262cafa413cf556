"""TLS through `sslmode` (issue 11): deja's URL reaches libpq whole, and TLS failures are one line.

Two servers (fixtures/pg_tls.py), with a CA and a server certificate made by
`openssl` for the module:

- the system's PostgreSQL with `ssl = on` on 127.0.0.1: deja's own connect()
  with `sslmode=verify-full&sslrootcert=CA` lands on a session pg_stat_ssl
  shows as TLS, `deja doctor` says TLS and the server's log says "SSL enabled"
  for each of its connections; a role whose only pg_hba line is `hostnossl`
  with `sslmode=require`, and the wrong CA with `verify-full`, each get one
  line, exit 1, no password, no traceback;
- a TLS front before the run's pgserver (which has pgvector but no OpenSSL):
  `deja ingest` and `deja search` over `verify-full`, every connection TLS.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from fixtures.cli import deja, deja_json
from fixtures.paths import SAMPLE
from fixtures.pg_tls import NOSSL_ROLE, TLS_ROLE, Certs, TlsFront, TlsServer, make_certs, start_tls_server
from fixtures.postgres import PASSWORD_ROLE, PgServer

from ingest.config import PostgresUrl
from ingest.pg.connect import connect


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[TlsServer]:
    server = start_tls_server(certs, secrets.token_urlsafe(12))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def front(postgres_server: PgServer, certs: Certs) -> Iterator[TlsFront]:
    proxy = TlsFront(postgres_server.socket_dir / ".s.PGSQL.5432", certs)
    yield proxy
    proxy.close()


def one_line(proc: subprocess.CompletedProcess[str], secret: str, *needles: str) -> str:
    """The one `deja: ...` line a failed command printed, without `secret` or a traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert len(lines) == 1 and lines[0].startswith("deja: "), proc.stderr
    assert secret not in proc.stderr and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_verify_full_is_tls_on_the_server(tls_server: TlsServer, certs: Certs,
                                          home: Path) -> None:
    url = tls_server.url(TLS_ROLE, sslmode="verify-full", sslrootcert=str(certs.ca))

    async def session() -> tuple[bool, str, str]:
        conn = await connect(PostgresUrl(url), {})
        try:
            cur = await conn.execute("SELECT ssl, version, current_user FROM pg_stat_ssl "
                                     "WHERE pid = pg_backend_pid()")
            row = await cur.fetchone()
            assert row is not None
            return bool(row[0]), str(row[1]), str(row[2])
        finally:
            await conn.close()

    tls, version, user = anyio.run(session)
    assert (tls, user) == (True, TLS_ROLE) and version.startswith("TLSv1.")
    # The CLI: doctor reaches the server over TLS (and says this server lacks pgvector).
    proc = deja(home, "--db", url, "doctor", "--json", expect=1)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["connection"]["status"] == "ok", checks
    assert re.search(r"\bTLS\)$", checks["connection"]["detail"]), checks["connection"]
    assert checks["pgvector"]["status"] == "fail"
    assert tls_server.password not in proc.stdout + proc.stderr
    # The server's word for each of deja's sessions (connect() above, doctor's).
    authorized = [ln for ln in tls_server.log().splitlines() if "connection authorized" in ln
                  and f"user={TLS_ROLE}" in ln and "application_name=deja " in ln]
    assert len(authorized) >= 2 and all("SSL enabled (protocol=TLSv1." in ln
                                        for ln in authorized), authorized


def test_tls_failures_are_one_line(tls_server: TlsServer, certs: Certs, home: Path) -> None:
    secret = tls_server.password
    # The role's only line is hostnossl: asking for TLS finds no pg_hba.conf entry.
    url = tls_server.url(NOSSL_ROLE, sslmode="require")
    one_line(deja(home, "--db", url, "sessions", expect=1), secret,
             f"cannot connect to PostgreSQL at postgresql://{NOSSL_ROLE}@127.0.0.1:",
             "sslmode=require", "no pg_hba.conf entry", "SSL encryption")
    # ... and the TLS-only role without TLS is refused the same way.
    url = tls_server.url(TLS_ROLE, sslmode="disable")
    one_line(deja(home, "--db", url, "sessions", expect=1), secret, "no pg_hba.conf entry",
             "no encryption")
    # A certificate another CA signed: verify-full refuses the server.
    url = tls_server.url(TLS_ROLE, sslmode="verify-full", sslrootcert=str(certs.other_ca))
    one_line(deja(home, "--db", url, "ingest", "--root", str(SAMPLE), "--json", expect=1),
             secret, "certificate verify failed")


def test_ingest_and_search_over_verified_tls(front: TlsFront, postgres_server: PgServer,
                                             certs: Certs, home: Path) -> None:
    database = postgres_server.new_database(owner=PASSWORD_ROLE)
    with postgres_server.connect(database) as conn:  # pgvector is not a trusted extension
        conn.execute("CREATE EXTENSION vector")
    url = (f"postgresql://{PASSWORD_ROLE}:{postgres_server.password}@127.0.0.1:{front.port}/"
           f"{database}?sslmode=verify-full&sslrootcert={certs.ca}")
    out = deja_json(home, "--db", url, "ingest", "--root", str(SAMPLE), "--json", "--no-embed")
    assert out["new_records"] > 0 and postgres_server.password not in json.dumps(out)
    hits = deja_json(home, "--db", url, "search", "redis timeout", "--mode", "keyword",
                     "--json")["hits"]
    assert hits and "redis" in hits[0]["snippet"].lower()
    doctor = deja_json(home, "--db", url, "doctor", "--json", expect=None)
    connection = {c["name"]: c for c in doctor["checks"]}["connection"]
    assert connection["status"] == "ok" and connection["detail"].endswith(", TLS)")
    assert front.refused == 0 and len(front.tls_versions) >= 3
    assert all(v.startswith("TLSv1.") for v in front.tls_versions)
    # The wrong CA: nothing passes the front.
    passed = len(front.tls_versions)
    wrong = url.replace(str(certs.ca), str(certs.other_ca))
    one_line(deja(home, "--db", wrong, "search", "redis", "--mode", "keyword", expect=1),
             postgres_server.password, "certificate verify failed")
    assert len(front.tls_versions) == passed

"""At rest: a ``pg_dump`` reveals nothing, rows cannot be swapped, and KEK rotation re-wraps online."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from gateway.credentials import CredentialDecryptError, Kek, Keyring, parse_kek
from gateway.db import credentials as db_credentials
from tests.controlplane.helpers import asgi_controlplane, make_config
from tests.credentials.helpers import CANARY, bodies, canary, encodings, new_kek

pytestmark = [pytest.mark.anyio, pytest.mark.db]

SCOPE = ("tenant_local", "prod")


def _pg_dump() -> str | None:
    """The newest ``/usr/lib/postgresql/<N>/bin/pg_dump`` (a dump needs a version >= the server's), else PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), key=lambda p: int(Path(p).parts[-3]))
    return found[-1] if found else shutil.which("pg_dump")


def _ring(kek: str) -> Keyring:
    return Keyring(Kek(parse_kek(kek, "test").key))


async def test_a_pg_dump_of_the_database_holds_no_secret_in_any_encoding(
    database_url: str, opa_bin: Path, tmp_path: Path
) -> None:
    pg_dump = _pg_dump()
    if pg_dump is None:
        pytest.skip("no pg_dump binary (looked in /usr/lib/postgresql/*/bin and PATH)")
    kek = new_kek()
    async with asgi_controlplane(make_config(database_url, opa_bin, credentials={"kek": kek})) as (admin, _, state):
        await admin.post("/v1/servers", json={"name": "github", "transport": "streamable_http", "url": "http://x/mcp"})
        ids = []
        for body in bodies():
            r = await admin.post("/v1/credentials", json=body)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        rotation = {"secret": {"token": canary("rotated")}}
        assert (await admin.post(f"/v1/credentials/{ids[0]}/rotate", json=rotation)).status_code == 200
        binding = {"server": "github", "subject": {"kind": "everyone"}, "credential_id": ids[1]}
        assert (await admin.post("/v1/credential-bindings", json=binding)).status_code == 201
        async with state["cp_pool"].acquire() as conn:
            ciphertext = await conn.fetchval("SELECT ciphertext FROM credentials WHERE id = $1", ids[1])
    out = subprocess.run(
        [pg_dump, "--no-owner", "--dbname", database_url],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    dump = out.stdout
    # It is the right database, with the credentials in it (bytea dumped as hex).
    assert b"COPY public.credentials " in dump and b"c-headers" in dump and b"x-api-key" in dump
    assert ciphertext.hex().encode() in dump
    for form in encodings(CANARY) + encodings(parse_kek(kek, "test").key) + encodings(kek):
        assert form not in dump, form
    (tmp_path / "dump.sql").write_bytes(dump)  # left for inspection when the test fails


async def test_a_ciphertext_copied_onto_another_row_or_a_changed_kind_does_not_decrypt(
    database_url: str, opa_bin: Path
) -> None:
    kek = new_kek()
    async with asgi_controlplane(make_config(database_url, opa_bin, credentials={"kek": kek})) as (admin, _, state):
        a = (await admin.post("/v1/credentials", json=bodies("a")[0])).json()["id"]
        b = (await admin.post("/v1/credentials", json=bodies("b")[0])).json()["id"]
        async with state["cp_pool"].acquire() as conn:
            ring = _ring(kek)
            assert (await db_credentials.open_credential(conn, *SCOPE, b, ring)).reveal() == {"token": canary("bearer")}
            await conn.execute(
                "UPDATE credentials SET (wrapped_dek, nonce, ciphertext) ="
                " (SELECT wrapped_dek, nonce, ciphertext FROM credentials WHERE id = $1) WHERE id = $2",
                a,
                b,
            )
            with pytest.raises(CredentialDecryptError) as caught:
                await db_credentials.open_credential(conn, *SCOPE, b, ring)
            assert CANARY not in str(caught.value)
            await conn.execute("UPDATE credentials SET kind = 'headers' WHERE id = $1", a)
            with pytest.raises(CredentialDecryptError):
                await db_credentials.open_credential(conn, *SCOPE, a, ring)


async def test_rewrap_runs_online_alongside_rotations_and_reports_credentials_it_cannot_unwrap(
    database_url: str, opa_bin: Path, tmp_path: Path
) -> None:
    old, stray, new = new_kek(), new_kek(), new_kek()
    expected: dict[str, bytes] = {}
    async with asgi_controlplane(make_config(database_url, opa_bin, credentials={"kek": old})) as (admin, _, state):
        for i in range(24):
            body = {"name": f"k{i}", "kind": "bearer", "secret": {"token": canary(f"k{i}")}}
            expected[(await admin.post("/v1/credentials", json=body)).json()["id"]] = canary(f"k{i}").encode()
        async with state["cp_pool"].acquire() as conn:
            before = {str(r["id"]): tuple(r) for r in await conn.fetch("SELECT id, nonce, ciphertext FROM credentials")}
    async with asgi_controlplane(make_config(database_url, opa_bin, credentials={"kek": stray})) as (admin, _, _):
        body = {"name": "stray", "kind": "bearer", "secret": {"token": canary("stray")}}
        stray_id = (await admin.post("/v1/credentials", json=body)).json()["id"]
    old_file = tmp_path / "old.kek"
    old_file.write_text(old)
    old_file.chmod(0o600)
    rotated = make_config(database_url, opa_bin, credentials={"kek": new, "kek_previous_files": [str(old_file)]})
    rotate_ids = list(expected)[::3]
    results = []
    async with asgi_controlplane(rotated) as (admin, _, state):

        async def rewrap() -> None:
            r = await admin.post("/v1/credentials/rewrap")
            assert r.status_code == 200, r.text
            results.append(r.json())

        async def rotate(cid: str) -> None:
            r = await admin.post(f"/v1/credentials/{cid}/rotate", json={"secret": {"token": canary(f"new-{cid}")}})
            assert r.status_code == 200, r.text
            expected[cid] = canary(f"new-{cid}").encode()

        async with anyio.create_task_group() as tg:
            tg.start_soon(rewrap)
            for cid in rotate_ids:
                tg.start_soon(rotate, cid)
        final = (await admin.post("/v1/credentials/rewrap")).json()
        only_new = _ring(new)
        async with state["cp_pool"].acquire() as conn:
            for cid, token in expected.items():
                opened = await db_credentials.open_credential(conn, *SCOPE, cid, only_new)
                assert opened.reveal() == {"token": token.decode()}
                with pytest.raises(CredentialDecryptError):
                    await db_credentials.open_credential(conn, *SCOPE, cid, _ring(old))
            after = {str(r["id"]): tuple(r) for r in await conn.fetch("SELECT id, nonce, ciphertext FROM credentials")}
    new_id, stray_kek = parse_kek(new, "test").id, parse_kek(stray, "test").id
    assert results[0]["failed"] == [stray_id] and final["failed"] == [stray_id]
    assert final["by_kek"] == {new_id: len(expected), stray_kek: 1}
    assert results[0]["rewrapped"] + final["rewrapped"] <= len(expected)
    for cid in expected:  # re-wrapping leaves the encrypted secret as it was; rotation replaces it
        assert (after[cid] == before[cid]) is (cid not in rotate_ids), cid
    assert os.stat(old_file).st_mode & 0o077 == 0

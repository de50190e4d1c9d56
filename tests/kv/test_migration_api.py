"""The KV DAL's side of the DAL migration contract (``dals/kv/migration_api.py``), as its
process serves it, on each engine, through the platform's client
(``dgw/migrate/dal_client.py``): Export pages within their budget (a value in chunks
split across pages), Import by original version, Digest/Split/Entries, clear errors,
and the test fault switch (``KV_FAULTS_FILE``)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dals.kv.client import KvCallError, KvClient
from dgw.migrate.dal_client import DalClient, DalError, just, span
from dgw_api.migration.v1 import migration_pb2 as pb
from testkit.ports import free_port
from tests.kv.support import drop_schema, engine_config
from tests.kv.test_api import kv_env, running

MIB = 1024 * 1024


@dataclass
class Served:
    kv: KvClient
    contract: DalClient
    faults: Path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    schema = f"kv_mig_{secrets.token_hex(4)}"
    engine = await engine_config(request.param, tmp_path, schema)
    port = free_port()
    faults = tmp_path / "faults"
    env = kv_env(engine, port, free_port()) | {"KV_FAULTS_FILE": str(faults)}
    try:
        async with running(env):
            kv = KvClient.connect(f"127.0.0.1:{port}")
            contract = DalClient(f"127.0.0.1:{port}", retry_for_s=0)
            try:
                yield Served(kv, contract, faults)
            finally:
                await kv.close()
                await contract.close()
    finally:
        if request.param == "postgres":
            await drop_schema(schema)


async def test_export_then_import_copies_a_namespace_with_versions_in_bounded_pages(
    served: Served,
) -> None:
    big = bytes(range(256)) * (3 * MIB // 256)  # in chunks of 1 MiB
    for r in range(20):
        await served.kv.put("ns", f"r{r:02}", {b"a": b"x" * 5000, b"b": b"y" * 100})
    await served.kv.put("ns", "r10", {b"big": big})
    c = served.contract
    assert await c.namespaces() == ["ns", "other"]
    cursor, pages, items = b"", 0, 0
    while True:
        page = await c.export("ns", cursor, page_size_bytes=MIB)
        assert page.size_bytes <= MIB + 5100  # a page goes past its budget by less than one item
        imported = await c.import_page("other", page.page)
        assert imported.applied == page.items and imported.skipped_as_older == 0
        pages, items = pages + 1, items + page.items
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert items == 41 and pages >= 4
    src, dst = await c.digest("ns", [span()]), await c.digest("other", [span()])
    assert src == dst and src[0].count == 41
    assert [i.value for i in await served.kv.get("other", "r10", keys=[b"big"])] == [big]
    # The same page again, and an older copy under a newer live write: nothing applies.
    again = await c.export("ns", b"", page_size_bytes=64 * 1024)
    assert (await c.import_page("other", again.page)).applied == 0
    await served.kv.put("other", "r00", {b"a": b"live"})
    assert (await c.import_page("other", again.page)).applied == 0
    assert [i.value for i in await served.kv.get("other", "r00", keys=[b"a"])] == [b"live"]


async def test_split_and_entries_name_the_items_of_a_range(served: Served) -> None:
    for r in range(30):
        await served.kv.put("ns", f"r{r:02}", {b"k": b"v"})
    c = served.contract
    bounds = await c.split("ns", span(), 3)
    assert bounds == [("r10", b"k"), ("r20", b"k")]
    listed = await c.entries("ns", span(bounds[0], bounds[1]), 5)
    assert [e.id for e in listed.entries] == [
        "r10",
        "r11",
        "r12",
        "r13",
        "r14",
    ] and listed.truncated
    one = await c.entries("ns", just("r07", b"k"), 10)
    assert [(e.id, e.key, e.size, len(e.value_hash), len(e.writer)) for e in one.entries] == [
        ("r07", b"k", 1, 16, 16)
    ]
    counts = await c.digest("ns", [span(None, bounds[0]), span(bounds[0], None)], count_only=True)
    assert [(d.count, d.hash) for d in counts] == [(10, b""), (20, b"")]


async def test_bad_contract_calls_get_one_clear_error(served: Served) -> None:
    c = served.contract

    async def refused(call: object) -> str:
        with pytest.raises(DalError) as e:
            await call  # type: ignore[misc]
        return str(e.value)

    assert "FAILED_PRECONDITION" in await refused(c.export("nope"))
    assert "INVALID_ARGUMENT" in await refused(c.export("ns", b"not a cursor"))
    assert "not an ExportPage" in await refused(c.import_page("ns", b"\xff\xff"))
    page = pb.ExportPage()
    page.records.add(id="r").items.add(key=b"k", value=b"v", write_time_us=5, writer=b"short")
    assert "16-byte writer" in await refused(c.import_page("ns", page.SerializeToString()))
    assert "parts is 2 to" in await refused(c.split("ns", span(), 1))
    assert "limit is 1 to" in await refused(c.entries("ns", span(), 0))


async def test_the_fault_switch_makes_keyvalue_calls_unavailable_until_turned_off(
    served: Served,
) -> None:
    await served.kv.put("ns", "r", {b"k": b"v"})
    served.kv.attempts = 1
    served.faults.write_text("unavailable\n")
    with pytest.raises(KvCallError) as e:
        await served.kv.get("ns", "r")
    assert e.value.code is grpc.StatusCode.UNAVAILABLE and "fault injected" in str(e.value)
    assert (await served.contract.digest("ns", [span()], count_only=True))[
        0
    ].count == 1  # the contract still answers
    served.faults.write_text("ok\n")
    assert [i.value for i in await served.kv.get("ns", "r")] == [b"v"]

"""MetricsQueryService.ExportSamples over gRPC on the known data set, stored twice (a replay):
every endpoint-second of the run exactly once, in (group, endpoint, second) order, in pages of at
most the size asked, each value as stored."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import numpy as np
import pytest

from callmeter.catalog import METRICS
from callmeter.v1 import results_pb2, results_pb2_grpc
from services.metrics.query_servicer import MetricsQueryServicer
from services.metrics.store import MetricsStore
from tests.metrics.helpers import dataset, run, store_dataset

pytestmark = pytest.mark.timeout(120)

RUN, OTHER = "run-export", "run-export-other"


def expected_rows(data: dict[str, np.ndarray]) -> list[tuple[str, int, int, dict[str, int]]]:
    """(group, endpoint, second, every catalog metric as stored) per row, in export order."""
    rows = []
    for i in range(len(data["group"])):
        values = {m.name: int(data[m.name][i]) if m.name in data else 0 for m in METRICS}
        rows.append((str(data["group"][i]), int(data["endpoint"][i]), int(data["second"][i]), values))
    return sorted(rows, key=lambda row: row[:3])


def exported(pages: list[results_pb2.SamplesPage]) -> list[tuple[str, int, int, dict[str, int]]]:
    return [(s.group, s.endpoint, s.second, {m.name: int(getattr(s.metrics, m.name)) for m in METRICS})
            for page in pages for s in page.samples]


def test_export_streams_each_endpoint_second_once_in_order_in_bounded_pages(tmp_path: Path) -> None:
    data = dataset()
    other = {name: column[data["endpoint"] == 0] for name, column in data.items()}

    async def body() -> None:
        store = MetricsStore(f"chdb://{tmp_path / 'metrics'}", ttl_days=30)
        await store.open()
        await store.call(store_dataset, RUN, data, "first")
        await store.call(store_dataset, RUN, data, "replayed")
        await store.call(store_dataset, OTHER, other, "other")
        server = grpc.aio.server()
        results_pb2_grpc.add_MetricsQueryServiceServicer_to_server(MetricsQueryServicer(store), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = results_pb2_grpc.MetricsQueryServiceStub(channel)
                await check_export(stub, data, other)
                await check_bad_requests(stub)
        finally:
            await server.stop(0)
            await store.close()

    run(body())


async def pages_of(stub, run_id: str, page_size: int = 0) -> list[results_pb2.SamplesPage]:  # type: ignore[no-untyped-def]
    return [page async for page in stub.ExportSamples(results_pb2.ExportSamplesRequest(run_id=run_id,
                                                                                      page_size=page_size))]


async def check_export(stub, data: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    want = expected_rows(data)
    assert len(want) == 7 * 60
    for page_size in (50, 60, 7 * 60, 0):  # across endpoints; ending on a page boundary; one page; the default
        pages = await pages_of(stub, RUN, page_size)
        assert exported(pages) == want, page_size
        sizes = [len(page.samples) for page in pages]
        limit = page_size or 1000
        assert sizes == [limit] * (len(want) // limit) + ([len(want) % limit] if len(want) % limit else []), page_size
        assert len(pages) == math.ceil(len(want) / limit)
    assert exported(await pages_of(stub, OTHER, 25)) == expected_rows(other)
    assert await pages_of(stub, "no-such-run") == []


async def check_bad_requests(stub) -> None:  # type: ignore[no-untyped-def]
    for request, field in ((results_pb2.ExportSamplesRequest(), "run_id"),
                           (results_pb2.ExportSamplesRequest(run_id=RUN, page_size=-1), "page_size")):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await pages_of(stub, request.run_id, request.page_size)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(f"{field}: "), error.value.details()

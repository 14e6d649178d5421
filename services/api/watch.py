"""WatchRun's stream: a RunProgress about once a second until the run has ended, then its summary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import structlog

from callmeter.common.run_states import RUN_ENDED
from callmeter.state.models import utcnow
from callmeter.v1 import results_pb2, runs_pb2
from services.api.clients import Metrics
from services.api.handlers.runs import RunView

log = structlog.get_logger(__name__)

# States in which workers may have sent samples that metrics-ingest can summarize.
_MEASURED = frozenset({runs_pb2.RUN_STATE_RUNNING, runs_pb2.RUN_STATE_COLLECTING, runs_pb2.RUN_STATE_CANCELLED,
                       runs_pb2.RUN_STATE_TIMED_OUT})
# Ended states whose summary the orchestrator collects a moment later: the stream waits for it.
_SUMMARY_FOLLOWS = frozenset({runs_pb2.RUN_STATE_CANCELLED, runs_pb2.RUN_STATE_TIMED_OUT})


async def progress(view: RunView, reload: Callable[[], Awaitable[RunView]], metrics: Metrics,
                   interval_s: float) -> AsyncIterator[runs_pb2.RunProgress]:
    """``view`` is the run as first read (the caller was authorized then); ``reload`` reads it again."""
    warned = False
    while True:
        run = view.run
        message = runs_pb2.RunProgress(run_id=run.id, state=run.state, elapsed_s=view.elapsed_s(utcnow()))
        if run.state in RUN_ENDED and not (run.state in _SUMMARY_FOLLOWS and view.summary is None):
            # The orchestrator writes the summary when it judges the run; a failed run may have none.
            summary = view.summary or results_pb2.RunSummary(run_id=run.id)
            message.groups.extend(summary.groups)
            message.summary.CopyFrom(summary)
            yield message
            return
        if run.state in _MEASURED:
            try:
                live = await metrics.run_summary(run.id, view.groups)
                message.groups.extend(live.groups)
            except grpc.aio.AioRpcError as exc:
                # Progress goes on without groups; the state and elapsed time are still worth sending.
                if not warned:
                    log.warning("live_summary_unavailable", run_id=run.id, code=exc.code().name, detail=exc.details())
                    warned = True
        yield message
        await asyncio.sleep(interval_s)
        view = await reload()

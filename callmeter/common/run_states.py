"""Which run states are final: the run will not change again (its summary may still be collected)."""

from __future__ import annotations

from callmeter.v1 import runs_pb2

RUN_ENDED = frozenset({runs_pb2.RUN_STATE_FINISHED, runs_pb2.RUN_STATE_FAILED, runs_pb2.RUN_STATE_CANCELLED,
                       runs_pb2.RUN_STATE_TIMED_OUT})

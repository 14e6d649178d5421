"""The run summary metrics a quality gate may judge: GroupSummary fields and ratios of them.

The api validates gates against this list; the orchestrator judges them (a test keeps its
readers in step with it).
"""

GATE_METRICS = frozenset({
    "mos_avg", "mos_min", "loss_pct", "jitter_ms_p95", "rtt_ms_p95", "setup_ms_p95",
    "calls_failed_pct", "registered_pct", "calls_connected_pct",
})

"""The orchestrator: run lifecycle, placement, dispatch, and the worker registry."""

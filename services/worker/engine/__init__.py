"""The worker's engine: one OS process owning one pjsua2 Endpoint and a slice of virtual phones.

The supervisor talks to it over stdin/stdout with EngineCommand/EngineEvent frames
(channel.py); docs/engine.md has the protocol, the measured limits and how to size the pool.
"""

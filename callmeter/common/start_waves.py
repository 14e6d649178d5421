"""When each group of a run begins, in the two-phase start (docs/engine.md), for the orchestrator
across workers and for `callmeter worker --local` alike.

Phase one: every engine of the run starts and creates its endpoints (accounts, transports, media:
its listeners bound). Phase two: once all are prepared, every group begins at one common time,
except a caller group that calls a group of the run whose endpoints register
(``call_uri: "group:NAME"``, NAME with a registrar): it begins once that group has registered —
each of its endpoints registered or failed — or ``registration_wait_s`` after the common start,
whichever comes first. Calling earlier only earns 404s from the registrar, counted against the
system under test.
"""

from __future__ import annotations

from callmeter.v1 import common_pb2, tests_pb2

GROUP_PREFIX = "group:"
#: How long callers wait at most for the group they call to register, after the common start.
REGISTRATION_WAIT_S = 30.0


def called_group(group: tests_pb2.EndpointGroup) -> str | None:
    """The run's group this group calls ("group:NAME"), or None."""
    uri = group.target.call_uri
    return uri[len(GROUP_PREFIX):] if uri.startswith(GROUP_PREFIX) else None


def awaited_groups(spec: tests_pb2.TestSpec) -> dict[str, str]:
    """Caller group → the registering group it calls and so waits for."""
    registering = {group.name for group in spec.groups if group.target.registrar}
    return {group.name: called for group in spec.groups
            if group.role == common_pb2.ENDPOINT_ROLE_CALLER and (called := called_group(group)) in registering}


def has_registered(endpoints: int, registered: int, failed: int) -> bool:
    """Whether a group has registered: each endpoint registered or failed."""
    return registered + failed >= endpoints


def wait_reason(caller: str, called: str, endpoints: int, registered: int, wait_s: float) -> str:
    return (f"group {caller} began after waiting {wait_s:g} s for group {called} to register: "
            f"{registered} of its {endpoints} endpoints had")

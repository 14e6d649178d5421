"""Placement: a test's endpoints split across workers that match its labels, codecs and
transports and have free capacity. A group's endpoints go only to workers that carry the labels of
the test's worker_selector and of the group's own. Pure: workers and spec in, slices or the
shortfall out."""

from __future__ import annotations

from dataclasses import dataclass, field

from callmeter.common.codecs import codec_matches
from callmeter.common.enum_words import word
from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.v1 import common_pb2, tests_pb2


@dataclass
class Candidate:
    worker_id: str
    name: str
    free: int
    codecs: list[str]
    transports: set[int]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Slice:
    worker_id: str
    group: str
    first_index: int
    count: int


def _fits(candidate: Candidate, group: tests_pb2.EndpointGroup, selector: list[common_pb2.Label]) -> str | None:
    """Why the worker cannot run the group, or None when it can."""
    for label in selector:
        if candidate.labels.get(label.key) != label.value:
            return f"lacks label {label.key}={label.value}"
    missing = [name for name in group.codecs if not any(codec_matches(name, cid) for cid in candidate.codecs)]
    if missing:
        return f"lacks codec {', '.join(missing)}"
    if group.transport and group.transport not in candidate.transports:
        return f"lacks transport {word(common_pb2.Transport, group.transport)}"
    return None


def place(spec: tests_pb2.TestSpec, candidates: list[Candidate]) -> list[Slice]:
    """Fills the workers with the most free room first, so a group stays on few workers.

    Raises RESOURCE_EXHAUSTED naming each group's shortfall and why workers were passed over.
    """
    slices: list[Slice] = []
    shortfalls: list[str] = []
    for group in spec.groups:
        remaining, index = group.count, 0
        refusals: list[str] = []
        selector = [*spec.worker_selector, *group.worker_selector]
        for candidate in sorted(candidates, key=lambda c: -c.free):
            why = _fits(candidate, group, selector)
            if why is not None:
                refusals.append(f"{candidate.name} {why}")
                continue
            take = min(candidate.free, remaining)
            if take <= 0:
                continue
            slices.append(Slice(candidate.worker_id, group.name, index, take))
            candidate.free -= take
            remaining -= take
            index += take
            if remaining == 0:
                break
        if remaining:
            labels = f" and labels {', '.join(f'{l.key}={l.value}' for l in selector)}" if selector else ""
            detail = f"; {', '.join(refusals)}" if refusals else ""
            shortfalls.append(f"group {group.name!r}: {remaining} of {group.count} endpoints found no worker "
                              f"with free capacity{labels} ({len(candidates)} online{detail})")
    if shortfalls:
        raise CallmeterError(ErrorCode.RESOURCE_EXHAUSTED, "not enough capacity: " + "; ".join(shortfalls))
    return slices

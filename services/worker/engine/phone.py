"""A virtual phone: one pjsua2 Account, its calls, and what their callbacks record.

Callbacks only record (counters, timestamps, final codes, stream statistics); the scenario
driver reads the records and decides what to do next, the sampler turns them into metrics.
pjsua2 calls these callbacks on the engine's loop thread, from inside libHandleEvents.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pjsua2 as pj

from callmeter.v1.common_pb2 import ENDPOINT_OUTCOME_UNSPECIFIED
from services.worker.engine.sipstats import CallEvents, SipStats

if TYPE_CHECKING:
    from services.worker.engine.sampler import CallMeter


@dataclass
class PhoneCounters:
    """Increases since the last sample; the sampler reads and resets them."""

    register_attempts: int = 0
    register_failures: int = 0
    calls_attempted: int = 0
    calls_connected: int = 0
    calls_failed: int = 0


@dataclass
class PhoneState:
    registered: bool = False
    register_last_code: int = 0
    # Final code, reason and granted expiry of the newest REGISTER, and whether the driver saw it.
    register_reason: str = ""
    register_expires: int = 0
    register_done: bool = False
    # Whether the newest REGISTER got a response (else pjsip ended it: a timeout or transport error).
    register_responded: bool = False
    call_last_code: int = 0
    # Event values: set when the event completes, reported in that second only, then cleared.
    register_time_ms: int | None = None
    setup_time_ms: int | None = None
    ring_time_ms: int | None = None


@dataclass
class CallRecord:
    """What the driver and the sampler know of one call. Outlives its pjsua2 Call object."""

    outgoing: bool
    started: float = field(default_factory=time.monotonic)
    call: PhoneCall | None = None
    state: int = pj.PJSIP_INV_STATE_NULL
    early_at: float | None = None
    confirmed_at: float | None = None
    ended_at: float | None = None
    last_code: int = 0
    reason: str = ""
    # Why the call ended without a response to its INVITE: "timeout", "transport error" ("" otherwise).
    no_response: str = ""
    # Set by onCallMediaState; the driver (re)connects media and clears it.
    media_changed: bool = False
    # Index of the call's audio media once the driver connected it.
    audio_index: int | None = None
    # StreamStat of each audio stream as it was destroyed (pjsua2 can no longer be asked later).
    final_stats: list[pj.StreamStat] = field(default_factory=list)
    # The sampler's running state for the call's audio stream, once the driver connected it.
    meter: CallMeter | None = None


class PhoneCall(CallEvents, pj.Call):  # CallEvents: the SIP-level callbacks the catalog needs (sipstats.py)
    def __init__(self, phone: Phone, record: CallRecord, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(phone, call_id)
        self.phone = phone
        self.record = record
        record.call = self

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        self.phone.sip.on_call_state(self.record, prm.e, info)
        record, now = self.record, time.monotonic()
        record.state = info.state
        if info.state == pj.PJSIP_INV_STATE_EARLY and record.early_at is None and 180 <= info.lastStatusCode < 190:
            record.early_at = now
            if record.outgoing:
                self.phone.state.ring_time_ms = elapsed_ms(now - record.started)
        elif info.state == pj.PJSIP_INV_STATE_CONFIRMED and record.confirmed_at is None:
            record.confirmed_at = now
            record.last_code = info.lastStatusCode
            self.phone.counters.calls_connected += 1
            self.phone.state.call_last_code = info.lastStatusCode
            self.phone.state.setup_time_ms = elapsed_ms(now - record.started)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            record.ended_at = now
            record.reason = info.lastReason
            if record.confirmed_at is None:
                record.last_code = info.lastStatusCode
                self.phone.counters.calls_failed += 1
                self.phone.state.call_last_code = info.lastStatusCode
            # Drop the Call object now: its destructor clears the user data of its call id,
            # which must happen before pjsua gives that id to a new call.
            record.call = None
            self.phone.calls.discard(self)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        self.record.media_changed = True

    def onStreamDestroyed(self, prm: pj.OnStreamDestroyedParam) -> None:
        self.record.final_stats.append(self.getStreamStat(prm.streamIdx))


class Phone(pj.Account):
    """One virtual phone (endpoint) of a group."""

    def __init__(self, group: str, index: int) -> None:
        super().__init__()
        self.group = group
        self.index = index
        self.counters = PhoneCounters()
        self.state = PhoneState()
        self.sip = SipStats()  # responses by class, transaction times, DTMF, REGISTER details
        # (EndpointOutcome, SIP code) so far, as the scenario driver decides it; sent in every sample.
        self.outcome = (ENDPOINT_OUTCOME_UNSPECIFIED, 0)
        # Live pjsua2 Call objects; a call leaves this set when it is disconnected.
        self.calls: set[PhoneCall] = set()
        # Records of calls not yet fully sampled, oldest first.
        self.records: list[CallRecord] = []
        # Incoming calls the driver has not looked at yet.
        self.incoming: list[CallRecord] = []
        self._register_started = 0.0

    def new_call(self, outgoing: bool, call_id: int = pj.PJSUA_INVALID_ID) -> CallRecord:
        record = CallRecord(outgoing=outgoing)
        self.calls.add(PhoneCall(self, record, call_id))
        self.records.append(record)
        self.counters.calls_attempted += 1
        return record

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        self.incoming.append(self.new_call(outgoing=False, call_id=prm.callId))

    def onRegStarted(self, prm: pj.OnRegStartedParam) -> None:
        self.sip.on_reg_started(prm.renew, self.state.registered)
        self.counters.register_attempts += 1
        self._register_started = time.monotonic()

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        self.sip.on_reg_state(prm, self.state.registered)
        state = self.state
        state.register_last_code = prm.code
        state.register_reason = prm.reason
        state.register_responded = bool(prm.rdata.wholeMsg)
        state.register_expires = prm.expiration
        state.register_time_ms = elapsed_ms(time.monotonic() - self._register_started)
        state.registered = 200 <= prm.code < 300 and prm.expiration > 0
        state.register_done = True
        if not 200 <= prm.code < 300:
            self.counters.register_failures += 1


def elapsed_ms(seconds: float) -> int:
    """Whole milliseconds, rounded up: a measured interval is never 0, which on the wire means "not measured"
    (a REGISTER to a registrar on loopback completes in well under a millisecond)."""
    return max(1, math.ceil(seconds * 1000))

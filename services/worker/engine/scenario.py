"""The per-phone scenario driver: register, call or answer, hold, DTMF, hang up, unregister.

tick() runs on every loop iteration. It reads what the phone's callbacks recorded and decides
the next SIP action; it is the only place that acts on a phone during a run. Times are
time.monotonic() seconds. Each tick leaves in ``wake_at`` when the next timed action is due, so
that the engine's loop sleeps until then rather than polling (a SIP event wakes it anyway).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable

import pjsua2 as pj

from callmeter.common import outcomes
from callmeter.v1 import common_pb2
from services.worker.engine.media import MediaSource
from services.worker.engine.phone import CallRecord, Phone
from services.worker.engine.plan import PhonePlan
from services.worker.engine.sampler import CallMeter

# Bound on waiting for an unregistration's response at the end of a scenario.
UNREGISTER_WAIT_S = 5.0
BUSY_HERE = 486
TEMPORARILY_UNAVAILABLE = 480

ReportError = Callable[[Phone, int, int, str], None]  # (phone, EndpointOutcome, SIP code, reason)

# pjmedia's ioqueue (select backend: PJ_IOQUEUE_MAX_HANDLES 64 in this wheel) holds a call's RTP and
# RTCP sockets while the call lasts and for PJ_IOQUEUE_KEY_FREE_DELAY (500 ms) after it; registering
# a socket when no key is free aborts the process (`pj_ioqueue_register_sock2: Assertion
# !pj_list_empty(&ioqueue->free_list)`, seen with back-to-back calls of 0 s: ~60 calls/s in one
# engine). So an engine starts a call only while fewer than MEDIA_CALLS_MAX calls are live or ended
# within MEDIA_KEY_HOLD_S: 24 × 2 sockets leaves 16 of the 64 keys spare.
MEDIA_CALLS_MAX = 24
MEDIA_KEY_HOLD_S = 0.6
# pjsua reports a hung-up call DISCONNECTED at once (immediate hangup, pjproject #2600) but frees its
# call slot only when the BYE transaction ends; a call placed meanwhile may find all PJSUA_MAX_CALLS
# slots taken (PJ_ETOOMANY, seen with back-to-back calls of 0 s). Such a call is retried every
# SLOT_RETRY_S for up to SLOT_WAIT_S (SIP's Timer F bounds a BYE transaction) before it fails.
SLOT_RETRY_S = 0.02
SLOT_WAIT_S = 32.0


class MediaBudget:
    """Calls whose media sockets pjmedia's ioqueue may still hold, engine-wide.

    Outgoing calls wait for room; incoming ones cannot (pjsua creates their media before the
    engine hears of them) but are counted, so an engine that also receives calls slows its callers.
    """

    def __init__(self, max_calls: int = MEDIA_CALLS_MAX, hold_s: float = MEDIA_KEY_HOLD_S) -> None:
        self.max_calls = max_calls
        self.hold_s = hold_s
        self.open: list[CallRecord] = []
        self.released: deque[float] = deque()  # monotonic times calls ended, oldest first

    def track(self, record: CallRecord) -> None:
        self.open.append(record)

    def room(self, now: float) -> bool:
        # A record whose call object is gone (cancelled before it was looked at, refused before
        # sending anything) holds no media any more, even if no end time was recorded for it.
        gone = [record for record in self.open if record.ended_at is not None or record.call is None]
        if gone:
            self.released.extend(sorted(record.ended_at if record.ended_at is not None else now for record in gone))
            self.open = [record for record in self.open if record not in gone]
        while self.released and now - self.released[0] >= self.hold_s:
            self.released.popleft()
        return len(self.open) + len(self.released) < self.max_calls


class Stage(enum.Enum):
    WAITING = "waiting"  # for the run's start
    REGISTERING = "registering"
    ACTIVE = "active"  # calling, answering or holding a registration
    UNREGISTERING = "unregistering"
    FINISHED = "finished"


class Driver:
    def __init__(self, plan: PhonePlan, phone: Phone, source: MediaSource, sink: pj.AudioMedia,
                 begin_at: float, report_error: ReportError, rtp_ports: tuple[int, int] = (0, 0),
                 media_budget: MediaBudget | None = None) -> None:
        self.plan = plan
        self.media_budget = media_budget or MediaBudget()  # shared by the engine's drivers
        self.rtp_ports = rtp_ports  # (first, last) RTP/RTCP ports of this phone; (0, 0): pjsua's choice
        self.phone = phone
        self.source = source
        self.sink = sink
        self.report_error = report_error
        self.stage = Stage.WAITING
        self.call: CallRecord | None = None  # the phone's current call
        self.calls_done = 0  # calls ended, placed (callers) or received (callees)
        self.schedule(begin_at)
        self._unregister_deadline = 0.0
        self._acted: set[str] = set()  # one-shot actions taken on the current call
        # The last response to the current call's INVITE when the ring timeout cancelled it (0: none).
        self._code_at_cancel = 0
        self._answer_at: float | None = None
        self._slot_wait_since: float | None = None  # first PJ_ETOOMANY of the call being placed
        #: When tick() next has a timed action to take, as of the last tick (math.inf: none;
        #: the past: something waits without a due time, e.g. room in the media budget).
        self.wake_at = math.inf

    def schedule(self, begin_at: float) -> None:
        """Sets when the phone begins (monotonic time; math.inf: not yet known) and its timeline."""
        plan = self.plan
        self.begin_at = begin_at
        self.next_call_at = begin_at + plan.start_offset_s
        self.end_at = begin_at + plan.run_for_s if plan.run_for_s else None
        self.calls_due_at = begin_at + plan.calls_due_s if plan.calls_due_s is not None else None

    @property
    def finished(self) -> bool:
        return self.stage is Stage.FINISHED

    def _fail(self, outcome: int, sip_code: int, reason: str) -> None:
        """Reports an endpoint error; the first failure decides the endpoint's outcome."""
        self.phone.outcome = outcomes.worse(self.phone.outcome, (outcome, sip_code))
        self.report_error(self.phone, outcome, sip_code, reason)

    def _end(self) -> None:
        """The scenario is over: an endpoint with no failure so far succeeded."""
        self.stage = Stage.FINISHED
        self.phone.outcome = outcomes.worse(self.phone.outcome, (outcomes.SUCCESS, 0))

    def tick(self, now: float) -> None:
        self.wake_at = math.inf
        if self.stage is Stage.FINISHED or self.plan.role != common_pb2.ENDPOINT_ROLE_CALLEE:
            self._refuse_incoming()
        if self.stage is Stage.WAITING:
            if self._due(now, self.begin_at):
                self._begin()
            return
        registration = self._registration_event()
        if self.stage is Stage.REGISTERING:
            if not registration:
                return
            if not self.phone.state.registered:
                self._end()  # the failure was reported; a phone that cannot register does no more
                return
            self.stage = Stage.ACTIVE
        if self.stage is Stage.ACTIVE:
            self._active(now)
        elif self.stage is Stage.UNREGISTERING:
            if registration or self._due(now, self._unregister_deadline):
                if not registration:
                    self._fail(outcomes.TEARDOWN_ERROR, 0, f"un-REGISTER at {self.plan.registrar}: no response "
                               f"within {UNREGISTER_WAIT_S:g} s")
                self._end()

    def stop(self, now: float) -> None:
        """Ends the scenario early (engine stop): hang up, then unregister where configured."""
        for record in [self.call, *self.phone.incoming]:
            if record is not None and record.call is not None and record.ended_at is None:
                _try(lambda call=record.call: call.hangup(pj.CallOpParam()))
        self.phone.incoming.clear()
        if self.stage in (Stage.ACTIVE, Stage.REGISTERING):
            self._finish(now)
        elif self.stage is Stage.WAITING:
            self.stage = Stage.FINISHED  # it never began: no outcome of its own

    def _begin(self) -> None:
        if not self.plan.registrar:
            self.stage = Stage.ACTIVE
            return
        self.stage = Stage.REGISTERING
        error = _try(lambda: self.phone.setRegistration(True))
        if error:
            self._fail(outcomes.ENGINE_ERROR, 0, f"REGISTER not sent: {error}")
            self._end()

    def _registration_event(self) -> bool:
        """Whether a REGISTER transaction ended since the last tick; reports failures."""
        state = self.phone.state
        if not state.register_done:
            return False
        state.register_done = False
        code = state.register_last_code
        if 200 <= code < 300:
            return True
        what = "un-REGISTER" if self.stage is Stage.UNREGISTERING else "REGISTER"
        if state.register_responded:
            outcome, reason = outcomes.REGISTRATION_FAILED, f"{what} to {self.plan.registrar} failed: {code} {state.register_reason}"
        else:  # pjsip ended the transaction itself: its 408 or 503 is no response of the registrar's
            code, outcome = 0, outcomes.TIMEOUT if code == 408 else outcomes.REGISTRATION_FAILED
            reason = f"{what} to {self.plan.registrar}: no response ({state.register_reason or 'timeout'}; no SIP code)"
        self._fail(outcomes.TEARDOWN_ERROR if self.stage is Stage.UNREGISTERING else outcome, code, reason)
        return True

    def _active(self, now: float) -> None:
        role = self.plan.role
        if self.call is not None:
            self._follow_call(now)
        if role == common_pb2.ENDPOINT_ROLE_CALLER:
            if self.call is None:
                if self.calls_done >= self.plan.repetitions:
                    self._finish(now)
                elif self._due(now, self.next_call_at):
                    self._place_call(now)
        elif role == common_pb2.ENDPOINT_ROLE_CALLEE:
            self._take_incoming(now)
            expected = self.plan.expected_calls
            if self.call is None and expected is not None:
                if self.calls_done >= expected:
                    self._finish(now)
                elif self.calls_due_at is not None and self._due(now, self.calls_due_at):
                    self._fail(outcomes.NOT_CALLED, 0, f"{self.calls_done} of the {expected} calls the callers' "
                               "schedule would place arrived by its end; giving up on the rest")
                    self._finish(now)
        if self.stage is Stage.ACTIVE and self.end_at is not None and self._due(now, self.end_at):
            self.stop(now)

    def _place_call(self, now: float) -> None:
        if not self.media_budget.room(now):
            self.wake_at = now  # a later tick places it (see MediaBudget)
            return
        record = self.phone.new_call(outgoing=True)
        self.media_budget.track(record)
        self.call, self._acted = record, set()
        error = _try(lambda: record.call.makeCall(self.plan.call_uri, pj.CallOpParam(True)))
        if error and "PJ_ETOOMANY" in error:
            self._slot_wait_since = self._slot_wait_since or now
            if now - self._slot_wait_since < SLOT_WAIT_S:
                self._unplace(record)
                self.next_call_at = now + SLOT_RETRY_S
                return
        self._slot_wait_since = None
        if error:
            # No INVITE left: the call failed locally (e.g. no free call slot or RTP port, bad URI).
            # It is over here and now, reported once: _follow_call will not see it.
            self.phone.calls.discard(record.call)
            record.call, record.ended_at = None, now
            self.phone.counters.calls_failed += 1
            self.phone.state.call_last_code = 0
            if "already in use" in error and self.rtp_ports[0]:
                error += f" (no free RTP/RTCP port pair in {self.rtp_ports[0]}-{self.rtp_ports[1]})"
            self._fail(outcomes.ENGINE_ERROR, 0, f"call to {self.plan.call_uri} not placed: {error}")
            self.call = None
            self.calls_done += 1
            self.next_call_at = now + self.plan.pause_s

    def _unplace(self, record: CallRecord) -> None:
        """Forgets a call that pjsua refused before sending anything, to place it again later."""
        self.phone.calls.discard(record.call)
        record.call = None
        self.phone.records.remove(record)
        self.phone.counters.calls_attempted -= 1
        self.media_budget.open.remove(record)
        self.call = None

    def _take_incoming(self, now: float) -> None:
        while self.phone.incoming:
            record = self.phone.incoming.pop(0)
            self.media_budget.track(record)
            if record.call is None:  # cancelled before we looked
                self.calls_done += 1
                continue
            if self.call is not None:
                self._answer(record, BUSY_HERE)  # one call at a time per phone, as a phone would
                self.calls_done += 1
            elif self.plan.reject_code:
                self._answer(record, self.plan.reject_code)
                self.call, self._acted, self._answer_at = record, set(), None
            else:
                self._answer(record, 180)
                self.phone.state.ring_time_ms = round((now - record.started) * 1000)
                self.call, self._acted, self._answer_at = record, set(), now + self.plan.answer_delay_s

    def _refuse_incoming(self) -> None:
        """Answers 480 to calls this phone does not take: it is no callee, or it has finished."""
        while self.phone.incoming:
            record = self.phone.incoming.pop(0)
            self.media_budget.track(record)
            self._answer(record, TEMPORARILY_UNAVAILABLE)

    def _follow_call(self, now: float) -> None:
        record, plan = self.call, self.plan
        assert record is not None
        if record.ended_at is not None:
            if record.confirmed_at is None and record.outgoing:
                if ("cancel" in self._acted and self._code_at_cancel < 100) or record.no_response:
                    # No response at all: pjsua reports its own 487 or 408, which nobody sent.
                    record.last_code = self.phone.state.call_last_code = 0
                self._fail(*self._failure(record))
            elif record.outgoing and "hangup" not in self._acted:
                lasted = record.ended_at - (record.confirmed_at or record.ended_at)
                self._fail(outcomes.CALL_FAILED, 0, f"call to {plan.call_uri} dropped by the far end after "
                           f"{lasted:.1f} s of the {plan.call_duration_s:g} s planned")
            self.call = None
            self.calls_done += 1
            self.next_call_at = now + plan.pause_s
            return
        call = record.call
        if call is None:
            return
        if record.media_changed:
            record.media_changed = False
            index = self.source.attach(record, self.sink)
            if index is not None and record.audio_index is None:
                record.audio_index = index
                record.meter = CallMeter(call, index)
        if record.confirmed_at is None:
            if not record.outgoing and self._answer_at is not None and self._due(now, self._answer_at):
                self._answer_at = None
                self._answer(record, 200)
            elif record.outgoing and self._due(now, record.started + plan.ring_timeout_s) and self._once("cancel"):
                self._code_at_cancel = _last_status(call)
                _try(lambda: call.hangup(pj.CallOpParam()))
            return
        confirmed = record.confirmed_at
        if plan.hold is not None:
            if self._due(now, confirmed + plan.hold.after_s) and self._once("hold"):
                self._act(lambda: call.setHold(pj.CallOpParam(True)), "hold")
            if self._due(now, confirmed + plan.hold.after_s + plan.hold.duration_s) and self._once("unhold"):
                param = pj.CallOpParam(True)
                param.opt.flag = pj.PJSUA_CALL_UNHOLD
                self._act(lambda: call.reinvite(param), "unhold")
        if plan.dtmf is not None and self._due(now, confirmed + plan.dtmf.after_s) and self._once("dtmf"):
            param = pj.CallSendDtmfParam()
            param.digits = plan.dtmf.digits
            param.method = (pj.PJSUA_DTMF_METHOD_SIP_INFO if plan.dtmf.method == common_pb2.DTMF_METHOD_SIP_INFO
                            else pj.PJSUA_DTMF_METHOD_RFC2833)
            self._act(lambda: call.sendDtmf(param), "DTMF")
        if record.outgoing and self._due(now, confirmed + plan.call_duration_s) and self._once("hangup"):
            error = _try(lambda: call.hangup(pj.CallOpParam()))
            if error:
                self._fail(outcomes.TEARDOWN_ERROR, 0, f"hanging up the call to {plan.call_uri} failed: {error}")

    def _failure(self, record: CallRecord) -> tuple[int, int, str]:
        """Why an outgoing call did not connect, as (outcome, SIP code, reason): its final
        response, the ring timeout that ended it, or no response at all."""
        uri, final = self.plan.call_uri, f"{record.last_code} {record.reason}".strip()
        timeout = f"{self.plan.ring_timeout_s:g} s"
        if "cancel" in self._acted and self._code_at_cancel >= 100:
            return outcomes.TIMEOUT, 0, (f"call to {uri} not answered within the ring timeout ({timeout}; last "
                                         f"response {self._code_at_cancel}), cancelled: {final}")
        if "cancel" in self._acted:
            return outcomes.TIMEOUT, 0, (f"call to {uri}: no response at all within the ring timeout ({timeout}): "
                                         "target unreachable or not listening; given up (timeout, no SIP code)")
        if record.no_response == "timeout":
            return outcomes.TIMEOUT, 0, f"call to {uri}: no final response to the INVITE (transaction timeout, no SIP code)"
        if record.no_response:
            return outcomes.CALL_FAILED, 0, f"call to {uri} failed: {record.no_response} ({record.reason}; no SIP code)"
        if record.last_code in outcomes.NEGOTIATION_CODES:
            return outcomes.NEGOTIATION_FAILED, record.last_code, f"call to {uri} failed: {final} (its offer refused)"
        return outcomes.CALL_FAILED, record.last_code, f"call to {uri} failed: {final}"

    def _answer(self, record: CallRecord, code: int) -> None:
        param = pj.CallOpParam()
        param.statusCode = code
        call = record.call
        if call is not None:
            _try(lambda: call.answer(param))  # fails only if the caller gave up meanwhile

    def _finish(self, now: float) -> None:
        if self.plan.unregister_at_end and self.phone.state.registered:
            self.stage = Stage.UNREGISTERING
            self._unregister_deadline = now + UNREGISTER_WAIT_S
            error = _try(lambda: self.phone.setRegistration(False))
            if error is None:
                return
            self._fail(outcomes.TEARDOWN_ERROR, 0, f"un-REGISTER not sent: {error}")
        self._end()

    def _due(self, now: float, at: float) -> bool:
        """Whether ``at`` has come; if not, the loop is to wake by then."""
        if now >= at:
            return True
        self.wake_at = min(self.wake_at, at)
        return False

    def _once(self, action: str) -> bool:
        if action in self._acted:
            return False
        self._acted.add(action)
        return True

    def _act(self, action: Callable[[], object], what: str) -> None:
        error = _try(action)
        if error:
            self._fail(outcomes.WARNINGS, 0, f"{what} failed: {error}")


def _last_status(call: pj.Call) -> int:
    try:
        return call.getInfo().lastStatusCode
    except pj.Error:
        return 0


def _try(action: Callable[[], object]) -> str | None:
    """Runs a pjsua2 call; returns its error text instead of raising."""
    try:
        action()
    except pj.Error as exc:
        return exc.reason or exc.info()
    return None

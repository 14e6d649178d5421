"""SIP-level records of a phone for the metrics catalog: responses by class, transaction times,
re-INVITEs, BYEs, CANCELs, INFOs, DTMF, and the details of each REGISTER.

pjsua2 reports these only through callbacks: a call's transaction events (Call.onCallTsxState),
its DTMF (onDtmfDigit, onDtmfEvent) and the account's registration events (onRegStarted,
onRegState). `CallEvents` is mixed into phone.PhoneCall; phone.Phone hands its registration
events to its `SipStats`. Like every callback here they only record; the sampler reads and
resets the records once a second (`SipStats.take`).

What a transaction event means (pjsip's transaction state machine, checked on loopback):
- UAC, state CALLING caused by TX_MSG: the request went out (once; retransmissions change no state).
  A second INVITE of the same call while the first has no final response is pjsua's retry after
  a response it handled itself without reporting it (a 401/407 digest challenge, checked).
- UAC, caused by RX_MSG with a status code: a response arrived (100, 18x, final).
- UAS, state TRYING caused by RX_MSG: a request arrived. The initial INVITE's arrives before the
  Call object exists, so it is not seen here (phone.py counts incoming calls).
- UAS, caused by TX_MSG with a status code: this endpoint sent a response.
- UAS INVITE, TERMINATED caused by USER after a 2xx: the ACK arrived (sip_inv.c terminates the
  INVITE transaction on the ACK of a 2xx).
- TRANSPORT_ERROR: the request could not be sent (e.g. TCP connection refused).
- TERMINATED caused by TIMER before any final response: the transaction timed out.

What pjsua does not report there (measured): the event that ends a call (a final response >= 300,
sent or received, a transport error, a timeout) reaches onCallState DISCONNECTED only, because
pjsua tears the call down first, so it is counted from there (`on_call_state`); and a local
hang-up disconnects the call as soon as its BYE or CANCEL is sent, so those are counted at
Call.hangup and their responses are never seen.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import pjsua2 as pj

from services.worker.engine.settings import Log

if TYPE_CHECKING:
    from services.worker.engine.phone import CallRecord, Phone

log = Log()

# pjmedia_stream_dtmf_event_flags (pjmedia/stream.h): the event ends the digit.
DTMF_IS_END = 1 << 1
# SIP methods whose requests and transaction times are counted, by catalog name stem.
_METHODS = {"BYE": "bye", "CANCEL": "cancel", "INFO": "info"}


class SipStats:
    """A phone's SIP counters and event values since the last sample."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()  # catalog counter name -> increase since the last sample
        self.events: dict[str, int] = {}  # catalog event value name -> newest value since the last sample
        # Outstanding client transactions of each call: (id(record), method) -> (start, is re-INVITE, 100 seen).
        self._pending: dict[tuple[int, str], tuple[float, bool, bool]] = {}
        # Calls whose 2xx to an INVITE went out and whose ACK has not come: id(record) -> when.
        self._awaiting_ack: dict[int, float] = {}
        # The newest registration: when its 2xx came and the expiry the registrar granted.
        self.registered_at: float | None = None
        self.granted_s = 0
        self._unregistering = False

    def take(self) -> tuple[Counter[str], dict[str, int]]:
        """The counters and event values since the last take, and starts afresh."""
        counts, events = self.counts, self.events
        self.counts, self.events = Counter(), {}
        return counts, events

    def expiry_left_s(self, now: float) -> int:
        """Seconds the newest registration has left, 0 when there is none."""
        if self.registered_at is None:
            return 0
        return max(0, round(self.granted_s - (now - self.registered_at)))

    # Calls

    def on_tsx(self, record: CallRecord, event: pj.SipEvent) -> None:
        if event.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        change = event.body.tsxState
        tsx = change.tsx
        method, code, state, cause = tsx.method, tsx.statusCode, tsx.state, change.type
        now = time.monotonic()
        key = (id(record), method)
        if cause == pj.PJSIP_EVENT_TRANSPORT_ERROR:
            self.counts["sip_transport_errors"] += 1
            self._pending.pop(key, None)
        elif tsx.role == pj.PJSIP_ROLE_UAC:
            self._client(record, key, method, code, state, cause, change.prevState, now)
        else:
            self._server(record, method, code, state, cause, now)

    def _client(self, record: CallRecord, key: tuple[int, str], method: str, code: int, state: int, cause: int,
                previous: int, now: float) -> None:
        if cause == pj.PJSIP_EVENT_TX_MSG and state == pj.PJSIP_TSX_STATE_CALLING:
            if method == "INVITE" and key in self._pending:
                # pjsua re-sent the INVITE after a final response it handled itself and did not
                # report (a 401/407 challenge, a 422): times keep counting from the first INVITE.
                self.counts["invite_retries"] += 1
                return
            reinvite = method == "INVITE" and record.confirmed_at is not None
            self._pending[key] = (now, reinvite, False)
            if reinvite:
                self.counts["reinvites_sent"] += 1
            elif method in _METHODS:
                self.counts[f"{_METHODS[method]}s_sent"] += 1
            return
        if cause == pj.PJSIP_EVENT_TIMER and state == pj.PJSIP_TSX_STATE_TERMINATED \
                and previous < pj.PJSIP_TSX_STATE_COMPLETED:
            self.counts["sip_timeouts"] += 1  # no final response before the transaction's timer
            self._pending.pop(key, None)
            return
        if cause != pj.PJSIP_EVENT_RX_MSG or code < 100:
            return
        started, reinvite, trying_seen = self._pending.get(key, (None, False, False))
        if method == "INVITE":
            self._invite_response(code)
            if code == 100 and started is not None and not reinvite and not trying_seen:
                self.events["trying_time_ms"] = _tenths_ms(now - started)
                self._pending[key] = (started, reinvite, True)
        if code < 200:
            return
        self._pending.pop(key, None)
        if started is None:
            return
        if method == "INVITE":
            if reinvite:
                self.events["reinvite_time_ms"] = _tenths_ms(now - started)
            elif code >= 300:
                self.events["call_fail_time_ms"] = _ms(now - started)
        elif method in _METHODS:
            self.events[f"{_METHODS[method]}_time_ms"] = _tenths_ms(now - started)

    def _invite_response(self, code: int) -> None:
        self.counts[f"invite_rx_{min(code // 100, 6)}xx"] += 1

    def _server(self, record: CallRecord, method: str, code: int, state: int, cause: int, now: float) -> None:
        confirmed = record.confirmed_at is not None
        if cause == pj.PJSIP_EVENT_RX_MSG and state == pj.PJSIP_TSX_STATE_TRYING:
            if method == "INVITE":
                if confirmed:
                    self.counts["reinvites_received"] += 1
            elif method in _METHODS:
                self.counts[f"{_METHODS[method]}s_received"] += 1
        elif cause == pj.PJSIP_EVENT_TX_MSG and code >= 100 and method == "INVITE":
            self.counts[f"invite_tx_{min(code // 100, 6)}xx"] += 1
            if 200 <= code < 300:
                self._awaiting_ack[id(record)] = now
                if not confirmed:
                    self.counts["calls_answered"] += 1
                    self.events["answer_time_ms"] = _ms(now - record.started)
        elif method == "INVITE" and cause == pj.PJSIP_EVENT_USER and state == pj.PJSIP_TSX_STATE_TERMINATED:
            answered = self._awaiting_ack.pop(id(record), None)
            if answered is not None:
                self.events["ack_time_ms"] = _tenths_ms(now - answered)

    def on_call_state(self, record: CallRecord, event: pj.SipEvent, info: pj.CallInfo) -> None:
        _guarded(lambda: self._call_state(record, event, info))

    def _call_state(self, record: CallRecord, event: pj.SipEvent, info: pj.CallInfo) -> None:
        """The transaction event that disconnected the call: pjsua tears the call down before it
        would report that event to onCallTsxState, so it is counted here (only here)."""
        if info.state != pj.PJSIP_INV_STATE_DISCONNECTED:
            return
        if record.confirmed_at is not None:
            self.events["call_end_code"] = info.lastStatusCode
        if event.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        change = event.body.tsxState
        tsx = change.tsx
        method, code, cause = tsx.method, tsx.statusCode, change.type
        now = time.monotonic()
        if cause == pj.PJSIP_EVENT_TRANSPORT_ERROR:
            self.counts["sip_transport_errors"] += 1
            record.no_response = "transport error"
        elif cause == pj.PJSIP_EVENT_TIMER and tsx.state == pj.PJSIP_TSX_STATE_TERMINATED \
                and change.prevState < pj.PJSIP_TSX_STATE_COMPLETED:
            self.counts["sip_timeouts"] += 1
            record.no_response = "timeout"
        elif method == "INVITE" and code >= 300:
            if tsx.role == pj.PJSIP_ROLE_UAC and cause == pj.PJSIP_EVENT_RX_MSG:
                self._invite_response(code)
                started, _, _ = self._pending.get((id(record), "INVITE"), (None, False, False))
                if started is not None:
                    self.events["call_fail_time_ms"] = _ms(now - started)
            elif tsx.role == pj.PJSIP_ROLE_UAS and cause == pj.PJSIP_EVENT_TX_MSG:
                self.counts[f"invite_tx_{min(code // 100, 6)}xx"] += 1

    def hangup_sends(self, record: CallRecord) -> str:
        """What hanging up the call now sends: BYE when connected, CANCEL when an outgoing call
        has not been answered (pjsip sends it once the call has had a provisional response),
        "" otherwise (an incoming call is rejected with a final response, counted when sent)."""
        if record.ended_at is not None:
            return ""
        if record.confirmed_at is not None:
            return "BYE"
        return "CANCEL" if record.outgoing else ""

    def on_hung_up(self, sent: str) -> None:
        """Counted here: pjsua disconnects the call as soon as it sends the BYE or CANCEL, so the
        call reports neither transaction (nor the responses to them) afterwards."""
        if sent:
            self.counts[f"{_METHODS[sent]}s_sent"] += 1

    def forget(self, record: CallRecord) -> None:
        """Drops what is kept of a call that has ended."""
        for key in [k for k in self._pending if k[0] == id(record)]:
            del self._pending[key]
        self._awaiting_ack.pop(id(record), None)

    # DTMF

    def on_dtmf_sent(self, digits: str, method: int) -> None:
        kind = "info" if method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc2833"
        self.counts[f"dtmf_sent_{kind}"] += len(digits)

    def on_dtmf_digit(self, method: int) -> None:
        kind = "info" if method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc2833"
        self.counts[f"dtmf_received_{kind}"] += 1

    def on_dtmf_event(self, flags: int, duration_ms: int) -> None:
        if flags & DTMF_IS_END:
            self.events["dtmf_received_duration_ms"] = duration_ms

    # Registration

    def on_reg_started(self, renew: bool, registered: bool) -> None:
        _guarded(lambda: self._reg_started(renew, registered))

    def on_reg_state(self, prm: pj.OnRegStateParam, was_registered: bool) -> None:
        _guarded(lambda: self._reg_state(prm, was_registered))

    def _reg_started(self, renew: bool, registered: bool) -> None:
        # pjsua reports the REGISTERs the scenario asks for, not its own refreshes (pjsua_acc.c).
        self._unregistering = not renew
        if not renew:
            self.counts["unregisters"] += 1

    def _reg_state(self, prm: pj.OnRegStateParam, was_registered: bool) -> None:
        code, response = prm.code, prm.rdata.wholeMsg
        if response and 200 <= code < 700:
            self.counts[f"register_{code // 100}xx"] += 1
        elif not response:  # pjsip ended the transaction itself: no response came
            self.counts["sip_timeouts" if code == 408 else "sip_transport_errors"] += 1
        if was_registered and not self._unregistering:
            self.counts["register_refreshes"] += 1  # pjsua refreshed on its own: no onRegStarted
        registered = 200 <= code < 300 and prm.expiration > 0
        if registered:
            self.registered_at, self.granted_s = time.monotonic(), prm.expiration
            self.events["register_granted_s"] = prm.expiration
            self.events["register_bindings"] = count_contacts(response)
        else:
            self.registered_at, self.granted_s = None, 0
            if was_registered and not self._unregistering:
                self.counts["registrations_lost"] += 1


class CallEvents:
    """Mixed into phone.PhoneCall (before pj.Call): the call callbacks phone.py does not handle.

    A Python exception must not escape a pjsua2 callback (it would reach C++), so each one is
    guarded: a bug here costs a metric, not the engine.
    """

    phone: Phone
    record: CallRecord

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        _guarded(lambda: self.phone.sip.on_tsx(self.record, prm.e))

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        _guarded(lambda: self.phone.sip.on_dtmf_digit(prm.method))

    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:
        _guarded(lambda: self.phone.sip.on_dtmf_event(prm.flags, prm.duration))

    def hangup(self, prm: pj.CallOpParam) -> None:
        sends = self.phone.sip.hangup_sends(self.record)  # decided first: the call disconnects inside hangup
        super().hangup(prm)  # type: ignore[misc]  # raises pj.Error when nothing was sent
        self.phone.sip.on_hung_up(sends)

    def sendDtmf(self, prm: pj.CallSendDtmfParam) -> None:
        super().sendDtmf(prm)  # type: ignore[misc]  # raises pj.Error when nothing was sent
        self.phone.sip.on_dtmf_sent(prm.digits, prm.method)


def count_contacts(message: str) -> int:
    """Contact bindings listed in a SIP message's headers (a REGISTER's 2xx lists every binding)."""
    head = message.replace("\r\n", "\n").split("\n\n", 1)[0]
    count = 0
    for line in head.split("\n")[1:]:
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() in ("contact", "m"):
            count += len(_split_outside_brackets(value))
    return count


def _split_outside_brackets(value: str) -> list[str]:
    """Comma-separated items of a header value, ignoring commas inside <...> and quotes."""
    items, depth, quoted, current = [], 0, False, ""
    for char in value:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth -= 1
        elif char == "," and not quoted and depth == 0:
            items.append(current)
            current = ""
            continue
        current += char
    items.append(current)
    return [item for item in items if item.strip()]


def _guarded(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - see CallEvents
        log.error("SIP metrics callback failed", error=repr(exc))


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _tenths_ms(seconds: float) -> int:
    return max(0, round(seconds * 10000))

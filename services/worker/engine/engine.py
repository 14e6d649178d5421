"""One engine process: one pjsua2 Endpoint running a slice of virtual phones on one thread.

The loop: libHandleEvents (SIP, timers, pjsua2 callbacks) → commands from the supervisor →
each phone's scenario driver → jitter-buffer readings → at each second boundary, one sample per
phone → EngineDone once every scenario has finished. libHandleEvents waits until the earliest
timed action (a scenario's, a reading, the next sample; at most CALLMETER_ENGINE_POLL_MS) or a
SIP event, whichever comes first: waking 50 times a second whether or not anything was due cost
a third of an engine's CPU with its calls up (docs/engine.md). pjsua2 is only ever called from this
thread (threadCnt 0, mainThreadOnly, FACTS.md); RTP and the conference bridge run on pjmedia's
own C threads, so media timing does not depend on this loop.

Shutdown (stop command, end of stdin, SIGTERM): hang up, unregister where the scenario says,
drop every Call object and media port while the library lives, libDestroy without network
traffic, then os._exit so that no Python finalizer touches pjsua2 after it is gone (a Call
destroyed after libDestroy aborts the process, FACTS.md).
"""

from __future__ import annotations

import gc
import math
import os
import queue
import signal
import time

import pjsua2 as pj

from callmeter import __version__
from callmeter.catalog import BY_NAME
from callmeter.v1 import common_pb2, engine_pb2, workers_pb2
from services.worker.engine.channel import ChannelError, CommandReader, EventWriter, take_stdout
from services.worker.engine.media import MediaSource
from services.worker.engine.phone import Phone, PhoneCall
from services.worker.engine.plan import Limits, Media, PhonePlan, codec_names, plan_start, uri_host_port
from services.worker.engine.sampler import Sampler
from services.worker.engine.scenario import Driver, MediaBudget, Stage
from services.worker.engine.settings import EngineSettings, Log, SettingError

log = Log()

# Compiled into the pjsua2-python 2.15.1 wheel (PJSUA_MAX_ACC, PJSUA_MAX_CALLS); measured with
# `python -m services.worker.engine.probe`: a 9th account aborts the process, UaConfig.maxCalls
# above 4 is silently capped. docs/engine.md.
LIMITS = Limits(max_accounts=8, max_calls=4)
# The conference bridge rate: 8 kHz spares G.711 calls a resampler each way (FACTS.md).
CLOCK_RATE = 8000
# Bound on hanging up and unregistering at shutdown.
SHUTDOWN_WAIT_S = 3.0
# The wait while something is pending with no due time (a call waiting for room in the media
# budget, a first RTP packet awaited): the timing resolution of those, as a fixed poll gave before.
BUSY_POLL_MS = 20

_TRANSPORTS = {
    common_pb2.TRANSPORT_UDP: (pj.PJSIP_TRANSPORT_UDP, "UDP"),
    common_pb2.TRANSPORT_TCP: (pj.PJSIP_TRANSPORT_TCP, "TCP"),
    common_pb2.TRANSPORT_TLS: (pj.PJSIP_TRANSPORT_TLS, "TLS"),
}
_SRTP_USE = {
    common_pb2.SRTP_MODE_OFF: pj.PJMEDIA_SRTP_DISABLED,
    common_pb2.SRTP_MODE_OPTIONAL: pj.PJMEDIA_SRTP_OPTIONAL,
    common_pb2.SRTP_MODE_MANDATORY: pj.PJMEDIA_SRTP_MANDATORY,
}
_SRTP_KEYING = {
    common_pb2.SRTP_KEYING_SDES: pj.PJMEDIA_SRTP_KEYING_SDES,
    common_pb2.SRTP_KEYING_DTLS: pj.PJMEDIA_SRTP_KEYING_DTLS_SRTP,
}
_PJ_LOG_LEVEL = {"debug": 4, "info": 2, "warning": 2, "error": 1}


class _Endpoint(pj.Endpoint):
    """Hands an incoming request to the callee phone whose AOR user and SIP port it addresses.

    pjsua's own choice looks at user and host only, so a caller "sip:0@127.0.0.1" and a callee
    "sip:0@127.0.0.1:5070" in one engine would be confused.
    """

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[tuple[str, int], int] = {}

    def onSelectAccount(self, prm: pj.OnSelectAccountParam) -> None:
        if not self.routes:
            return
        request_line = prm.rdata.wholeMsg.split("\n", 1)[0].split()
        if len(request_line) < 2:
            return
        uri = request_line[1]
        user = uri.split(":", 1)[-1].split("@", 1)[0] if "@" in uri else ""
        account = self.routes.get((user, uri_host_port(uri)[1] or 5060))
        if account is not None:
            prm.accountIndex = account


class Engine:
    def __init__(self, settings: EngineSettings, events: EventWriter) -> None:
        self.settings = settings
        self.events = events
        self.ep = _Endpoint()
        self.codec_ids: list[str] = []
        self.run_id = ""
        self.phones: list[Phone] = []
        self.drivers: list[Driver] = []
        self.sources: dict[Media, MediaSource | str] = {}
        self.transports: dict[tuple[int, int], int | str] = {}
        self.sampler: Sampler | None = None
        self.next_second = 0.0
        self.cpu_mark = (0.0, 0.0)  # (process time, wall clock) at the last CPU reading
        self.sampling = False
        self.done_sent = False
        self.stop_reason: str | None = None
        self.exit_code = 0

    # Life cycle

    def open(self) -> None:
        ep, s = self.ep, self.settings
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = LIMITS.max_calls
        cfg.uaConfig.userAgent = f"callmeter-engine/{__version__} pjsua2/{ep.libVersion().full}"
        cfg.logConfig.level = cfg.logConfig.consoleLevel = _PJ_LOG_LEVEL[s.log_level]
        media = cfg.medConfig
        media.clockRate = media.sndClockRate = CLOCK_RATE
        media.ecTailLen = 0  # no echo canceller: nothing is played into a microphone here
        media.noVad = True  # send every frame: a silent stream would look like loss
        ep.libInit(cfg)
        ep.audDevManager().setNullDev()
        ep.libStart()
        self.codec_ids = [codec.codecId for codec in ep.codecEnum2()]

    def ready(self) -> engine_pb2.EngineEvent:
        return engine_pb2.EngineEvent(ready=engine_pb2.EngineReady(
            pid=os.getpid(), codecs=codec_names(self.codec_ids),
            max_calls=LIMITS.max_calls, max_accounts=LIMITS.max_accounts))

    def run(self, commands: queue.SimpleQueue) -> int:
        wait_ms = self.settings.poll_ms
        while self.stop_reason is None:
            self.ep.libHandleEvents(wait_ms)
            self._commands(commands)
            if self.stop_reason is None:
                now, wall = time.monotonic(), time.time()
                self._step(now, wall)
                wait_ms = self._wait_ms(now, wall)
        self._shutdown()
        return self.exit_code

    def stop(self, reason: str, exit_code: int = 0) -> None:
        if self.stop_reason is None:
            self.stop_reason, self.exit_code = reason, exit_code

    # Commands and events

    def _commands(self, commands: queue.SimpleQueue) -> None:
        while True:
            try:
                command = commands.get_nowait()
            except queue.Empty:
                return
            if command is None:
                self.stop("stdin closed")
            elif isinstance(command, ChannelError):
                log.error("bad command stream", error=str(command))
                self.stop("bad command stream", exit_code=2)
            elif command.HasField("stop"):
                self.stop(f"stop: {command.stop.reason}")
            elif command.HasField("start"):
                if self.run_id:
                    self._error("", 0, 0, f"this engine already runs {self.run_id!r}; start one engine per run")
                else:
                    self._start(command.start)
            elif command.HasField("begin"):
                self._begin(command.begin.start_at, set(command.begin.groups))

    def send(self, event: engine_pb2.EngineEvent) -> None:
        try:
            self.events.send(event)
        except OSError as exc:  # the supervisor is gone: nothing left to report to
            self.stop(f"stdout closed: {exc}", exit_code=0)

    def _error(self, group: str, endpoint: int, sip_code: int, reason: str,
               outcome: int = common_pb2.ENDPOINT_OUTCOME_ENGINE_ERROR) -> None:
        log.warning("endpoint error", run_id=self.run_id, group=group, endpoint=endpoint, sip_code=sip_code, reason=reason)
        self.send(engine_pb2.EngineEvent(endpoint_error=workers_pb2.EndpointError(
            group=group, endpoint=endpoint, sip_code=sip_code, reason=reason, outcome=outcome)))

    def _report(self, phone: Phone, outcome: int, sip_code: int, reason: str) -> None:
        self._error(phone.group, phone.index, sip_code, reason, outcome)

    # The run

    def _start(self, start: engine_pb2.EngineStart) -> None:
        self.run_id = start.run_id or "unnamed"
        plan = plan_start(start, self.codec_ids, LIMITS, local_host=self.settings.sip_ip or "127.0.0.1")
        for error in plan.errors:
            self._error(error.group, error.endpoint, 0, error.reason)
        if plan.codec_order:
            for priority, codec_id in enumerate([*plan.codec_order, *(c for c in self.codec_ids if c not in plan.codec_order)]):
                self.ep.codecSetPriority(codec_id, max(255 - priority, 1) if codec_id in plan.codec_order else 0)
        sink = self.ep.audDevManager().getPlaybackDevMedia()
        media_budget = MediaBudget()
        rtp_slices = _rtp_slices(start.rtp_port_min, start.rtp_port_max, len(plan.phones))
        for phone_plan, rtp_ports in zip(plan.phones, rtp_slices):
            phone = self._phone(phone_plan, rtp_ports)
            if phone is None:
                continue
            self.phones.append(phone)
            self.drivers.append(Driver(phone_plan, phone, self.sources[phone_plan.media], sink, math.inf, self._report,
                                      rtp_ports=_port_span(*rtp_ports), media_budget=media_budget))
            if phone_plan.role == common_pb2.ENDPOINT_ROLE_CALLEE and not phone_plan.registrar:
                user = phone_plan.aor.split(":", 1)[1].split("@", 1)[0]
                self.ep.routes[(user, phone_plan.local_port)] = phone.getId()
        self.sampler = Sampler(self.phones)
        log.info("run prepared", run_id=self.run_id, phones=len(self.phones), refused=len(plan.errors),
                 codecs=plan.codec_order or "default")
        self.send(engine_pb2.EngineEvent(prepared=engine_pb2.EnginePrepared(run_id=self.run_id)))
        if start.start_at:
            self._begin(start.start_at, set())

    def _begin(self, begin_wall: float, groups: set[str]) -> None:
        """The endpoints of these groups (all if none named) begin at ``begin_wall`` (Unix time);
        sampling starts with the first of them."""
        if self.sampler is None:
            self._error("", 0, 0, "begin before start: nothing to begin")
            return
        begin = time.monotonic() + (begin_wall - time.time())
        for driver in self.drivers:
            if (not groups or driver.plan.group in groups) and math.isinf(driver.begin_at):  # the first begin holds
                driver.schedule(begin)
        if not self.sampling and not self.done_sent:
            self.sampling = True
            self.next_second = math.floor(begin_wall) + 1
            self.cpu_mark = (time.process_time(), time.time())
        log.info("run begins", run_id=self.run_id, groups=sorted(groups) or "all",
                 begins_in_s=round(begin_wall - time.time(), 3))

    def _phone(self, plan: PhonePlan, rtp_ports: tuple[int, int]) -> Phone | None:
        """Creates the phone's account (and the transport and media it needs), or reports why not."""
        source = self._source(plan.media)
        transport = self._transport(plan.transport, plan.local_port)
        problem = source if isinstance(source, str) else transport if isinstance(transport, str) else None
        if problem is not None:
            self._error(plan.group, plan.index, 0, problem)
            return None
        cfg = pj.AccountConfig()
        cfg.idUri = plan.aor
        cfg.sipConfig.transportId = transport
        if plan.proxy:
            cfg.sipConfig.proxies.append(plan.proxy)
        if plan.auth is not None:
            cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", plan.auth.realm, plan.auth.username, 0, plan.auth.password))
        if plan.registrar:
            reg = cfg.regConfig
            reg.registrarUri = plan.registrar
            reg.registerOnAdd = False  # the driver registers at the run's start
            reg.timeoutSec = plan.register_expiry_s
            reg.delayBeforeRefreshSec = plan.refresh_before_s
            reg.retryIntervalSec = 0  # a failed registration is reported, not retried behind the scenario
        rtp = cfg.mediaConfig.transportConfig
        rtp.port, rtp.portRange = rtp_ports
        rtp.boundAddress = self.settings.sip_ip
        rtp.publicAddress = self.settings.sdp_ip
        cfg.mediaConfig.srtpUse = _SRTP_USE[plan.srtp]
        if plan.srtp != common_pb2.SRTP_MODE_OFF:
            cfg.mediaConfig.srtpSecureSignaling = 0  # the group chose its transport; SDES over UDP is its call
            cfg.mediaConfig.srtpOpt.keyings.append(_SRTP_KEYING[plan.srtp_keying])
        phone = Phone(plan.group, plan.index)
        try:
            phone.create(cfg)
        except pj.Error as exc:
            self._error(plan.group, plan.index, 0, f"account {plan.aor} not created: {exc.reason}")
            return None
        return phone

    def _source(self, media: Media) -> MediaSource | str:
        if media not in self.sources:
            try:
                self.sources[media] = MediaSource(media, CLOCK_RATE)
            except pj.Error as exc:
                what = f"WAV file {media.wav_path}" if media.wav_path else f"{media.tone_hz} Hz tone"
                self.sources[media] = f"cannot play {what}: {exc.reason}"
        return self.sources[media]

    def _transport(self, kind: int, port: int) -> int | str:
        key = (kind, port)
        if key not in self.transports:
            pj_type, name = _TRANSPORTS[kind]
            cfg = pj.TransportConfig()
            cfg.port = port
            cfg.boundAddress = self.settings.sip_ip
            cfg.publicAddress = self.settings.external_ip
            if kind == common_pb2.TRANSPORT_TLS:
                tls, s = cfg.tlsConfig, self.settings
                tls.certFile, tls.privKeyFile, tls.CaListFile = s.tls_cert_file, s.tls_key_file, s.tls_ca_file
                tls.verifyServer = bool(s.tls_ca_file)
            try:
                self.transports[key] = self.ep.transportCreate(pj_type, cfg)
            except pj.Error as exc:
                where = f"port {port}" if port else "a free port"
                self.transports[key] = f"cannot listen for SIP over {name} on {self.settings.sip_ip or '*'} {where}: {exc.reason}"
        return self.transports[key]

    def _step(self, now: float, wall: float) -> None:
        if self.sampler is None:
            return
        for driver in self.drivers:
            driver.tick(now)
        self.sampler.poll(now)
        if self.sampling:
            self._emit_due(wall)
        if not self.done_sent and all(driver.finished for driver in self.drivers):
            if self.sampling:
                self._emit_samples(int(self.next_second) - 1, wall, self._cpu_pct(wall))  # this second until the end
                self.sampling = False
            self.done_sent = True
            self.send(engine_pb2.EngineEvent(done=engine_pb2.EngineDone(run_id=self.run_id)))
            log.info("run done", run_id=self.run_id)

    def _wait_ms(self, now: float, wall: float) -> int:
        """How long the next libHandleEvents may wait for a SIP event: until the earliest timed
        action, BUSY_POLL_MS while something is pending without one, at most poll_ms."""
        if self.sampler is None:
            return self.settings.poll_ms
        due = min([self.sampler.wake_at, *(driver.wake_at for driver in self.drivers)])
        if self.sampling:
            due = min(due, now + self.next_second - wall)
        left_ms = (due - now) * 1000
        if left_ms <= 0:
            return min(BUSY_POLL_MS, self.settings.poll_ms)
        return max(1, min(self.settings.poll_ms, math.ceil(left_ms)))

    def _emit_due(self, wall: float) -> None:
        """Samples every whole second up to ``wall`` not sampled yet. A loop that ran late (a starved
        CPU, a long callback) catches up second by second, the first sample carrying what
        accumulated meanwhile: every endpoint has a sample for every second from its start."""
        cpu_pct = self._cpu_pct(wall) if wall >= self.next_second else 0.0
        while wall >= self.next_second:
            self._emit_samples(int(self.next_second) - 1, wall, cpu_pct)
            self.next_second += 1

    def _cpu_pct(self, wall: float) -> float:
        """The engine's CPU since the last call, in percent of one core."""
        cpu, (cpu_before, wall_before) = time.process_time(), self.cpu_mark
        self.cpu_mark = (cpu, wall)
        return 100.0 * (cpu - cpu_before) / (wall - wall_before) if wall > wall_before else 0.0

    def _emit_samples(self, second: int, wall: float, cpu_pct: float) -> None:
        """The second's samples; the first carries the engine's own lateness and CPU
        (callmeter/common/generator_load.py)."""
        assert self.sampler is not None
        samples = self.sampler.sample(second)
        if samples:
            load = samples[0].metrics
            load.engine_lag_ms = round(max(0.0, wall - (second + 1)) * 1000 * BY_NAME["engine_lag_ms"].scale)
            load.engine_cpu_pct = round(cpu_pct * BY_NAME["engine_cpu_pct"].scale)
        for sample in samples:
            self.send(engine_pb2.EngineEvent(sample=sample))

    def _shutdown(self) -> None:
        log.info("stopping", reason=self.stop_reason, run_id=self.run_id)
        self._end_calls()
        self._drop_media_objects()
        # No network: registrations end as the scenario chose, not by the library going away;
        # the accounts go with the library.
        self.ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
        log.info("stopped", run_id=self.run_id)

    def _end_calls(self) -> None:
        """Hangs up and unregisters where the scenario says, waiting SHUTDOWN_WAIT_S at most."""
        now = time.monotonic()
        for driver in self.drivers:
            driver.stop(now)
        deadline = now + SHUTDOWN_WAIT_S
        while time.monotonic() < deadline and (
            any(phone.calls for phone in self.phones) or any(d.stage is Stage.UNREGISTERING for d in self.drivers)
        ):
            self.ep.libHandleEvents(BUSY_POLL_MS)
            for driver in self.drivers:
                driver.tick(time.monotonic())
        if self.sampling and self.sampler is not None:
            wall = time.time()
            self._emit_due(wall)
            if wall >= self.next_second - 1:  # the part of this second until now (not if stopped before the start)
                self._emit_samples(int(self.next_second) - 1, wall, self._cpu_pct(wall))

    def _drop_media_objects(self) -> None:
        """Lets every Call object and media port go while the library lives.

        Their destructors call into pjsua (a live call is hung up), so none may outlive
        libDestroy; this is a function of its own so that its loop variables are gone too.
        """
        for phone in self.phones:
            for record in phone.records + phone.incoming:
                record.call = None
            phone.calls.clear()
        self.drivers.clear()
        self.sampler = None
        self.sources.clear()
        gc.collect()
        leftover = sum(isinstance(obj, (PhoneCall, pj.AudioMedia)) for obj in gc.get_objects())
        if leftover:
            log.error("pjsua2 media objects still referenced at shutdown", count=leftover)


def _rtp_slices(first: int, last: int, phones: int) -> list[tuple[int, int]]:
    """(port, portRange) for each phone: disjoint even-aligned slices of [first, last].

    pjsua searches each account's ports from its own first port on, RTP on an even port
    p <= port + portRange and RTCP on p + 1; a slice each spares the phones bind attempts on
    one another's ports. (0, 0) leaves pjsua's defaults. A portRange of 0 would mean "no upper
    bound" to pjsua, so a range with room for one RTP/RTCP pair gets 1: pjsua wraps from p + 2
    back to p, and a call that finds that pair taken fails instead of leaving the range.
    """
    if not first or phones == 0:
        return [(0, 0)] * phones
    first += first % 2
    span = (last - first + 1) // phones // 2 * 2
    if span < 4:  # too few ports for a slice each: all phones search the whole range
        return [(first, max(last - first - 1, 1))] * phones
    return [(first + k * span, span - 2) for k in range(phones)]


def _port_span(port: int, port_range: int) -> tuple[int, int]:
    """The first and last port (RTCP included) pjsua may bind for (port, portRange)."""
    return (port, port + port_range // 2 * 2 + 1) if port else (0, 0)


def main() -> int:
    channel = take_stdout()
    try:
        settings = EngineSettings.from_env()
    except SettingError as error:
        log.error("bad setting", error=str(error))
        os._exit(2)
    log.set_level(settings.log_level)
    log.info("starting", version=__version__, settings=settings.describe())
    engine = Engine(settings, EventWriter(channel))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: engine.stop(signal.Signals(signum).name))
    try:
        engine.open()
    except pj.Error as exc:
        log.error("pjsua2 did not start", error=exc.info())
        os._exit(1)
    engine.send(engine.ready())
    code = engine.run(CommandReader(0).commands)
    # Nothing may run after libDestroy that could finalize a pjsua2 object: leave at once.
    os._exit(code)

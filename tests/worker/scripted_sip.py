"""A scripted SIP server on loopback UDP, for tests that need chosen REGISTER and INVITE outcomes.

REGISTER: answered by the number in its To user. A number in ``register_codes`` gets that final
response (302, 403, 503, ...); a number in ``lose`` gets 200 OK for its first REGISTER and 503
for every later one (a registration the registrar drops at its refresh); anything else gets
200 OK granting the requested expiry and listing the request's Contact.

INVITE: challenged like an authenticating proxy (407 with a digest challenge); the INVITE that
comes back with credentials gets the final response ``invite_codes`` gives for the number in the
request URI (486 if none). ACKs are swallowed. Nothing is proxied and no call is set up.
"""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter

REASONS = {200: "OK", 302: "Moved Temporarily", 403: "Forbidden", 407: "Proxy Authentication Required",
           486: "Busy Here", 503: "Service Unavailable", 603: "Decline"}
_ECHOED = ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")


class ScriptedSipServer:
    def __init__(self, register_codes: dict[int, int] | None = None, lose: set[int] | None = None,
                 invite_codes: dict[int, int] | None = None) -> None:
        self.register_codes = register_codes or {}
        self.lose = lose or set()
        self.invite_codes = invite_codes or {}
        self.registers: Counter[int] = Counter()  # REGISTERs received per user number
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="scripted-sip", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(data.decode(errors="replace"))
            if reply:
                self.sock.sendto(reply.encode(), peer)

    def answer(self, request: str) -> str | None:
        head = request.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")
        method, _, rest = head[0].partition(" ")
        headers = [line for line in head[1:] if ":" in line]
        value: dict[str, str] = {}
        for line in headers:
            name, _, text = line.partition(":")
            value.setdefault(name.strip().lower(), text.strip())
        extra: list[str] = []
        if method == "REGISTER":
            match = re.search(r"sips?:(\d+)@", value.get("to", value.get("t", "")))
            user = int(match.group(1)) if match else 0
            self.registers[user] += 1
            code = 503 if user in self.lose and self.registers[user] > 1 else self.register_codes.get(user, 200)
            contact = value.get("contact", value.get("m", ""))
            if code == 200 and contact and contact != "*":
                expires = re.search(r"expires=(\d+)", contact)
                seconds = int(expires.group(1)) if expires else int(value.get("expires", "3600"))
                if seconds > 0:
                    binding = re.sub(r";expires=\d+", "", contact)
                    extra.append(f"Contact: {binding};expires={seconds}")
        elif method == "INVITE":
            if "proxy-authorization" not in value:
                code = 407
                extra.append('Proxy-Authenticate: Digest realm="callmeter-test", nonce="0123456789abcdef", algorithm=MD5')
            else:
                match = re.match(r"sips?:(\d+)@", rest)
                code = self.invite_codes.get(int(match.group(1)) if match else 0, 486)
        else:
            return None  # ACK
        lines = [f"SIP/2.0 {code} {REASONS.get(code, 'Whatever')}"]
        for line in headers:
            name = line.partition(":")[0].strip().lower()
            if name in _ECHOED:
                if name in ("to", "t") and ";tag=" not in line:
                    line += ";tag=scripted"
                lines.append(line)
        lines += [*extra, "Content-Length: 0", "", ""]
        return "\r\n".join(lines)

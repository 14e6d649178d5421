"""Bad test files, one problem each, for every path that checks a test file: the API's validation,
`callmeter test validate` and `callmeter worker --local` (issue item 13: `validate` said "valid"
for 16 of 35 bad files). Each is the good file BASE with one change; the problem must be reported
once, naming ``field``, with each of ``words`` in it, on one line.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# A self-call that every path accepts.
BASE: dict[str, Any] = {
    "name": "table",
    "groups": [
        {"name": "callees", "count": 2, "role": "callee", "target": {"aor": "sip:callee{n}@127.0.0.1:5070"},
         "codecs": ["PCMU"], "media": {"tone": {"frequency_hz": 1004}}, "scenario": {"answer_delay": "0.5s"}},
        {"name": "callers", "count": 2, "role": "caller", "target": {"call_uri": "group:callees"},
         "codecs": ["PCMU"], "scenario": {"call_duration": "20s", "ring_timeout": "5s"}},
    ],
    "gates": [{"metric": "mos_avg", "comparison": "ge", "threshold": 4.0}],
    "timeout": "120s",
}

DELETE = object()  # as a value: the key is removed


@dataclass(frozen=True)
class BadFile:
    id: str
    at: str  # where the change is made, "groups[1].codecs"
    value: Any  # what is put there, or DELETE
    field: str  # the field the problem must name
    words: tuple[str, ...] = ()

    def data(self) -> dict[str, Any]:
        data = copy.deepcopy(BASE)
        *parents, last = re.findall(r"\w+|\[\d+\]", self.at)
        node: Any = data
        for key in parents:
            node = node[int(key[1:-1])] if key.startswith("[") else node.setdefault(key, {})
        if self.value is DELETE:
            del node[last]
        else:
            node[last] = self.value
        return data

    def write(self, directory: Path) -> Path:
        path = directory / f"{self.id}.yaml"
        path.write_text(yaml.safe_dump(self.data(), sort_keys=False, allow_unicode=True))
        return path


@dataclass(frozen=True)
class WithBaseline(BadFile):
    """A bad file whose test names a baseline (``baseline: last-pass``), so that a problem of a
    gate relative to it is its only one."""

    def data(self) -> dict[str, Any]:
        return {**super().data(), "baseline": "last-pass"}


# Files that read as a TestSpec, refused by the spec check (callmeter/common/spec_check.py).
REFUSED = [
    # what the issue names
    BadFile("unknown-codec", "groups[1].codecs", ["PCMU", "opus"], "groups[1].codecs[1]", ('"opus"', "PCMU")),
    BadFile("count-negative", "groups[0].count", -5, "groups[0].count", ("between 1 and 10000", "-5")),
    BadFile("count-zero", "groups[0].count", 0, "groups[0].count", ("between 1 and 10000",)),
    BadFile("count-million", "groups[0].count", 1_000_000, "groups[0].count", ("between 1 and 10000", "1000000")),
    BadFile("name-missing", "name", DELETE, "name", ("required",)),
    BadFile("group-name-missing", "groups[1].name", DELETE, "groups[1].name", ("required",)),
    BadFile("gate-metric-unknown", "gates[0].metric", "mos_average", "gates[0].metric", ('"mos_average"', "mos_avg")),
    BadFile("call-duration-negative", "groups[1].scenario.call_duration", -1, "groups[1].scenario.call_duration",
            ("negative",)),
    BadFile("timeout-negative", "timeout", "-5s", "timeout", ("negative",)),
    BadFile("answer-delay-negative", "groups[0].scenario.answer_delay", -0.5, "groups[0].scenario.answer_delay",
            ("negative",)),
    BadFile("hold-negative", "groups[1].scenario.hold", {"after": "2s", "duration": "-3s"},
            "groups[1].scenario.hold.duration", ("negative",)),
    BadFile("srtp-keying-dtls", "groups[1].srtp_keying", "dtls", "groups[1].srtp_keying", ("dtls",)),
    BadFile("call-uri-no-group", "groups[1].target.call_uri", "group:nobody", "groups[1].target.call_uri",
            ('"group:nobody"', "callees")),
    # more of the same kinds
    BadFile("call-uri-names-a-caller-group", "groups[1].target.call_uri", "group:callers",
            "groups[1].target.call_uri", ("no callee group",)),
    BadFile("call-uri-not-sip", "groups[1].target.call_uri", "127.0.0.1:5070", "groups[1].target.call_uri",
            ("sip:",)),
    BadFile("caller-without-call-uri", "groups[1].target.call_uri", DELETE, "groups[1].target.call_uri",
            ("needs",)),
    BadFile("callee-without-aor", "groups[0].target.aor", DELETE, "groups[0].target.aor", ("needs",)),
    BadFile("registrar-only-without-registrar", "groups[1].role", "registrar_only", "groups[1].target.registrar",
            ("needs",)),
    BadFile("role-missing", "groups[1].role", DELETE, "groups[1].role", ("required",)),
    BadFile("group-name-repeated", "groups[1].name", "callees", "groups[1].name", ("earlier group",)),
    BadFile("no-groups", "groups", [], "groups", ("at least one group",)),
    BadFile("empty-codec", "groups[1].codecs", ["PCMU", ""], "groups[1].codecs[1]", ("empty",)),
    BadFile("name-too-long", "name", "n" * 300, "name", ("at most 255",)),
    BadFile("timeout-too-long", "timeout", "90000s", "timeout", ("at most 86400",)),
    BadFile("gate-without-comparison", "gates[0].comparison", DELETE, "gates[0].comparison", ("required",)),
    BadFile("gate-threshold-nan", "gates[0].threshold", float("nan"), "gates[0].threshold", ("finite",)),
    BadFile("gate-group-unknown", "gates[0].group", "ghosts", "gates[0].group", ('"ghosts"',)),
    BadFile("reject-code", "groups[0].scenario.reject_code", 42, "groups[0].scenario.reject_code", ("300-699",)),
    BadFile("repetitions-negative", "groups[1].scenario.repetitions", -1, "groups[1].scenario.repetitions",
            ("negative",)),
    BadFile("ramp-negative", "groups[1].scenario.ramp_rate_cps", -2, "groups[1].scenario.ramp_rate_cps",
            ("non-negative",)),
    BadFile("dtmf-digits", "groups[1].scenario.dtmf", {"digits": "12x"}, "groups[1].scenario.dtmf.digits",
            ('"x"',)),
    BadFile("dtmf-without-digits", "groups[1].scenario.dtmf", {"method": "rfc2833"},
            "groups[1].scenario.dtmf.digits", ("required",)),
    BadFile("tone-frequency", "groups[0].media.tone.frequency_hz", 30_000, "groups[0].media.tone.frequency_hz",
            ("20000",)),
    BadFile("number-start-negative", "groups[0].target.number_start", -1, "groups[0].target.number_start",
            ("negative",)),
    BadFile("selector-without-key", "worker_selector", [{"value": "x"}], "worker_selector[0].key", ("required",)),
    BadFile("group-selector-without-key", "groups[1].worker_selector", [{"value": "a"}], "groups[1].worker_selector[0].key",
            ("required",)),
    BadFile("description-too-long", "description", "d" * (64 * 1024 + 1), "description", ("at most 65536",)),
    # baselines (docs/verdict.md, Baselines)
    BadFile("relative-gate-without-baseline", "gates", [{"metric": "mos_avg", "baseline": {"max_drop": 0.1}}],
            "baseline", ("required", "gates[0]", "last-pass", "run id")),
    BadFile("baseline-neither-last-pass-nor-a-run", "baseline", "last-passed", "baseline",
            ('"last-passed"', "last-pass", "run id")),
    WithBaseline("gate-absolute-and-relative", "gates[0].baseline", {"max_drop": 0.1}, "gates[0].baseline",
                 ("absolute", "relative", "not both")),
    WithBaseline("baseline-limit-empty", "gates", [{"metric": "mos_avg", "baseline": {}}], "gates[0].baseline",
                 ("max_drop", "max_rise_pct")),
    WithBaseline("baseline-limit-negative", "gates", [{"metric": "setup_ms_p95", "baseline": {"max_rise_pct": -20}}],
                 "gates[0].baseline.max_rise_pct", ("0 or more", "-20")),
    WithBaseline("baseline-limit-the-better-way", "gates", [{"metric": "mos_avg", "baseline": {"max_rise": 0.1}}],
                 "gates[0].baseline.max_rise", ("mos_avg", "max_drop")),
]

# Files the reader refuses (callmeter/common/testspec.py): named by their field, not "Failed to
# parse groups field: ...". A TestSpec sent to the API cannot have these problems.
UNREADABLE = [
    BadFile("srtp-dtls", "groups[1].srtp", "dtls", "groups[1].srtp", ("'dtls'", "mandatory")),
    BadFile("role-unknown", "groups[1].role", "dancer", "groups[1].role", ("'dancer'", "caller")),
    BadFile("unknown-field", "groups[0].colour", "red", "groups[0].colour", ("unknown field",)),
    BadFile("count-text", "groups[0].count", "ten", "groups[0].count", ("integer", "'ten'")),
    BadFile("count-fraction", "groups[0].count", 1.5, "groups[0].count", ("integer", "1.5")),
    BadFile("count-beyond-int32", "groups[0].count", 3_000_000_000, "groups[0].count", ("integer",)),
    BadFile("name-a-number", "name", 2024, "name", ("text",)),
    BadFile("target-not-a-mapping", "groups[1].target", "sip:bob@127.0.0.1", "groups[1].target", ("mapping",)),
    BadFile("duration-not-a-duration", "groups[1].scenario.call_duration", "twenty", "groups[1].scenario.call_duration",
            ("duration", "'twenty'")),
    BadFile("boolean-not-a-boolean", "groups[1].scenario.unregister_at_end", "yes please",
            "groups[1].scenario.unregister_at_end", ("true or false",)),
    BadFile("media-two-sources", "groups[0].media.wav_path", "/tmp/tone.wav", "groups[0].media", ("one of",)),
    BadFile("role-a-number", "groups[1].role", 7, "groups[1].role", ("7", "caller")),
    WithBaseline("baseline-two-limits", "gates", [{"metric": "mos_avg", "baseline": {"max_drop": 0.1, "max_drop_pct": 2}}],
                 "gates[0].baseline", ("only one of", "max_drop_pct")),
]

BAD_FILES = REFUSED + UNREADABLE


def problem_lines(stderr: str, file: Path) -> list[str]:
    """The lines of `test validate` / `worker --local` that report problems of ``file``."""
    return [line for line in stderr.splitlines() if line.startswith(f"{file}: ")]


def assert_reported(bad: BadFile, field: str, description: str) -> None:
    assert field == bad.field, (bad.id, field, description)
    assert "\n" not in description, (bad.id, description)
    for word in bad.words:
        assert word in description, (bad.id, word, description)


def assert_one_line(bad: BadFile, file: Path, lines: list[str]) -> None:
    """Exactly one problem line, "FILE: FIELD: PROBLEM", for this file's one problem."""
    assert len(lines) == 1, (bad.id, lines)
    field, _, description = lines[0].removeprefix(f"{file}: ").partition(": ")
    assert_reported(bad, field, description)

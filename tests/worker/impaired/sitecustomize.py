"""Imported at start-up by engines a test starts with PYTHONPATH pointing at this folder.

Every EpConfig such an engine makes gets the media settings named in the environment, so a
test gets pjmedia's own impairments on loopback (tests only):
- CALLMETER_TEST_RX_DROP_PCT: MediaConfig.rxDropPct, the share of received RTP packets pjmedia's
  UDP media transport drops (its loss simulation);
- CALLMETER_TEST_JB_INIT_MS, CALLMETER_TEST_JB_MIN_PRE_MS: MediaConfig.jbInit and jbMinPre, the
  jitter buffer's initial and lowest prefetch, as a phone with a deeper playout buffer has (with
  pjmedia's usual one-frame buffer on loopback, a lost packet is an empty buffer, not a lost frame).
"""

import os

_SETTINGS = {
    "rxDropPct": os.environ.get("CALLMETER_TEST_RX_DROP_PCT"),
    "jbInit": os.environ.get("CALLMETER_TEST_JB_INIT_MS"),
    "jbMinPre": os.environ.get("CALLMETER_TEST_JB_MIN_PRE_MS"),
}
_SETTINGS = {name: int(value) for name, value in _SETTINGS.items() if value}

if _SETTINGS:
    import pjsua2

    class _ImpairedEpConfig(pjsua2.EpConfig):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            for name, value in _SETTINGS.items():
                setattr(self.medConfig, name, value)

    pjsua2.EpConfig = _ImpairedEpConfig

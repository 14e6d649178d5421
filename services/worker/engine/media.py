"""What phones send: a tone or a looping WAV, one conference-bridge port shared by a group's calls.

Each connected call gets the source's port transmitting into its stream, and its stream
transmitting into the (null) sound device, so that the conference bridge pulls received audio
through the jitter buffer and the decoder every frame as a real phone would; without a listener
the bridge never reads the stream and the jitter buffer, loss concealment and its delay would
not be exercised.
"""

from __future__ import annotations

import pjsua2 as pj

from services.worker.engine.phone import CallRecord
from services.worker.engine.plan import Media


class MediaSource:
    def __init__(self, media: Media, clock_rate: int) -> None:
        self.media = media
        if media.wav_path:
            player = pj.AudioMediaPlayer()
            player.createPlayer(media.wav_path, 0)  # 0: loop at the end of the file
            self.port: pj.AudioMedia = player
        else:
            tone = pj.ToneGenerator()
            tone.createToneGenerator(clock_rate, 1)
            desc = pj.ToneDesc()
            desc.freq1, desc.freq2 = media.tone_hz, 0
            desc.on_msec, desc.off_msec, desc.volume = 1000, 0, 0  # volume 0: pjmedia's default level
            tones = pj.ToneDescVector()
            tones.append(desc)
            tone.play(tones, True)
            self.port = tone

    def attach(self, record: CallRecord, sink: pj.AudioMedia) -> int | None:
        """Connects the call's active audio both ways; returns its media index, or None."""
        call = record.call
        if call is None:
            return None
        info = call.getInfo()  # keep it referenced: info.media points into it
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status in (
                pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD, pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
            ):
                audio = call.getAudioMedia(media.index)
                self.port.startTransmit(audio)
                audio.startTransmit(sink)
                return media.index
        return None

"""Codec names in test specs against the codec ids a SIP stack reports ("PCMU/8000/1").

A name matches an id exactly or as its prefix up to a "/": "PCMU" matches "PCMU/8000/1",
"speex" every speex rate, "speex/16000" only that one. Case does not matter.
"""

from __future__ import annotations


def codec_matches(name: str, codec_id: str) -> bool:
    wanted, have = name.strip().lower(), codec_id.lower()
    return have == wanted or have.startswith(wanted + "/")


def resolve_codecs(names: list[str], codec_ids: list[str]) -> tuple[list[str], list[str]]:
    """Codec ids for the names, in the names' order, and the names that match none."""
    order: list[str] = []
    unknown: list[str] = []
    for name in names:
        matches = [cid for cid in codec_ids if codec_matches(name, cid)]
        if not matches:
            unknown.append(name)
        order += [cid for cid in matches if cid not in order]
    return order, unknown


def codec_names(codec_ids: list[str]) -> list[str]:
    """The names a spec may use, from the ids ("speex/16000/1" -> "speex")."""
    return list(dict.fromkeys(codec_id.split("/", 1)[0] for codec_id in codec_ids))

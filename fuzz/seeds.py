#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora into seeds/<target>/: a few valid
encoded requests of each kind (and near misses), so that fuzzing starts
from messages the server accepts. Hand-encoded protobuf, to need nothing
but Python; the field numbers are those of proto/gamesession/v1/*.proto.
Run it from anywhere; it rewrites the seeds it names and nothing else."""

import pathlib
import struct

here = pathlib.Path(__file__).resolve().parent


def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, value):
    """A field: varint for int/bool, length-delimited for bytes/str."""
    if isinstance(value, bool) or isinstance(value, int):
        return varint(number << 3) + varint(int(value) & (2**64 - 1))
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def entries(number, mapping):
    """A map<string, string> field."""
    return b"".join(field(number, field(1, k) + field(2, v)) for k, v in mapping.items())


def join(target_field, target, player_id="", name="", metadata=None):
    body = field(target_field, target)
    if player_id:
        body += field(3, player_id)
    if name:
        body += field(4, name)
    body += entries(5, metadata or {})
    return field(1, body)


def relay(payload, targets=(), droppable=False):
    body = field(1, payload) + b"".join(field(2, t) for t in targets)
    if droppable:
        body += field(3, True)
    return field(2, body)


def page_token(last_id):
    """As convert::page_token: version 1, the id, FNV-1a checksum."""
    import base64

    body = b"\x01" + last_id.encode()
    h = 0xCBF29CE484222325
    for byte in b"game-session ListSessions page token" + body:
        h = ((h ^ byte) * 0x100000001B3) & (2**64 - 1)
    token = body + struct.pack(">I", h & 0xFFFFFFFF)
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode()


client_message = {
    "join_mode": join(2, "duel", "p1", "Zoë 🎮", {"team": "red", "skill": "1200"}),
    "join_session": join(1, "0123abcd-ef", "alice"),
    "join_bad_name": join(2, "duel", "", "a\x1b[2Jb\u202e"),
    "relay": relay(b"\x00\x01hello", ["p2", "p3"], True),
    "relay_all": relay(b"x" * 64),
    "relay_bad_target": relay(b"x", ["bad id", "p2", "p2"]),
    "ping": field(3, field(1, 1_700_000_000_000)),
    "leave": field(4, b""),
    "empty": b"",
}

session_requests = {
    # First byte: 0 create, 1 list, 2 end, 3 send.
    "create": b"\x00" + field(1, "duel") + field(2, 4) + entries(3, {"region": "eu-west"})
    + field(4, b"{}") + field(5, True) + field(6, "req-1"),
    "list": b"\x01" + field(1, field(1, "duel") + entries(2, {"region": "eu"}) + field(3, True))
    + field(2, 10) + field(3, page_token("0123abcd")),
    "list_bad_token": b"\x01" + field(3, "AQ"),
    "end": b"\x02" + field(1, "0123abcd") + field(2, "game over"),
    "send": b"\x03" + field(1, "0123abcd") + field(2, b"payload") + field(3, "p1") + field(3, "p2"),
}

for target, seeds in [("client_message", client_message), ("session_requests", session_requests)]:
    directory = here / "seeds" / target
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (directory / name).write_bytes(data)

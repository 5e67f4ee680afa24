"""A Python game client for the interop test (tests/interop.rs).

Usage: play.py <host:port> <session_id>

Generates the gRPC stubs from proto/ with grpc_tools.protoc into a temporary
directory (so the test always checks the current contract), then plays one
Play stream as player "python":

1. joins the session by id and checks the welcome lists the Rust player,
2. relays b"hello from python" to everyone else,
3. waits for b"hello from rust" relayed by "rust", skipping presence events,
4. sends a leave and checks the stream ends with OK.

Progress goes to stdout, one line per step ("welcomed", ...), so the Rust
side can wait for a step; mismatches go to stderr and exit with status 1.
"""

import pathlib
import queue
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc

# The whole Play call, and the channel's connection, must finish within this.
DEADLINE_SECONDS = 20.0

PLAYER_ID = "python"
DISPLAY_NAME = "Python Player"
RUST_PLAYER_ID = "rust"
OUR_PAYLOAD = b"hello from python"
RUST_PAYLOAD = b"hello from rust"

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PROTO_FILES = ["gamesession/v1/common.proto", "gamesession/v1/player.proto", "gamesession/v1/session.proto"]


class Mismatch(Exception):
    """The server did something the test does not expect."""


def step(message):
    print(message, flush=True)


def generate_stubs(out_dir):
    """Compiles proto/ into out_dir and puts it on sys.path."""
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_DIR / name) for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise Mismatch(f"grpc_tools.protoc failed: {' '.join(args)}")
    sys.path.insert(0, str(out_dir))


def play(address, session_id):
    from gamesession.v1 import player_pb2, player_pb2_grpc

    outbox = queue.Queue()

    def requests():
        # None half-closes the request stream.
        while (message := outbox.get()) is not None:
            yield message

    def next_message(responses, waiting_for):
        try:
            return next(responses)
        except StopIteration:
            raise Mismatch(f"the stream ended while waiting for {waiting_for}") from None

    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=DEADLINE_SECONDS)
        stub = player_pb2_grpc.PlayerServiceStub(channel)
        outbox.put(
            player_pb2.ClientMessage(
                join=player_pb2.Join(session_id=session_id, player_id=PLAYER_ID, display_name=DISPLAY_NAME)
            )
        )
        responses = stub.Play(requests(), timeout=DEADLINE_SECONDS)
        try:
            first = next_message(responses, "the welcome")
            if first.WhichOneof("kind") != "welcome":
                raise Mismatch(f"expected a welcome, got {first}")
            welcome = first.welcome
            if welcome.session_id != session_id:
                raise Mismatch(f"welcome names session {welcome.session_id!r}, joined {session_id!r}")
            if welcome.player.player_id != PLAYER_ID or welcome.player.display_name != DISPLAY_NAME:
                raise Mismatch(f"welcome names the wrong player: {welcome.player}")
            if welcome.mode != "relay":
                raise Mismatch(f"welcome names mode {welcome.mode!r}, expected 'relay'")
            present = [p.player_id for p in welcome.players]
            if present != [RUST_PLAYER_ID]:
                raise Mismatch(f"welcome lists players {present}, expected [{RUST_PLAYER_ID!r}]")
            step(f"welcomed (sequence {welcome.sequence})")

            outbox.put(player_pb2.ClientMessage(relay=player_pb2.Relay(payload=OUR_PAYLOAD)))
            step("relayed")

            while True:
                message = next_message(responses, f"{RUST_PAYLOAD!r} from {RUST_PLAYER_ID!r}")
                kind = message.WhichOneof("kind")
                if kind == "presence":
                    continue
                if kind != "relayed":
                    raise Mismatch(f"expected a relayed message, got {message}")
                relayed = message.relayed
                if relayed.sender_id != RUST_PLAYER_ID or relayed.payload != RUST_PAYLOAD:
                    raise Mismatch(
                        f"expected {RUST_PAYLOAD!r} from {RUST_PLAYER_ID!r}, "
                        f"got {relayed.payload!r} from {relayed.sender_id!r}"
                    )
                if relayed.sequence <= welcome.sequence:
                    raise Mismatch(f"relayed sequence {relayed.sequence} is not after the welcome's")
                break
            step("received")

            outbox.put(player_pb2.ClientMessage(leave=player_pb2.Leave()))
            rest = list(responses)
            if rest:
                raise Mismatch(f"expected the stream to end after the leave, got {rest}")
            if responses.code() != grpc.StatusCode.OK:
                raise Mismatch(f"the stream ended with {responses.code()}: {responses.details()}")
            step("left")
        except grpc.RpcError as err:
            raise Mismatch(f"the Play stream failed: {err.code()}: {err.details()}") from None
        finally:
            outbox.put(None)


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} <host:port> <session_id>", file=sys.stderr)
        return 2
    address, session_id = argv[1], argv[2]
    try:
        with tempfile.TemporaryDirectory(prefix="gamesession-stubs-") as out_dir:
            generate_stubs(out_dir)
            play(address, session_id)
    except grpc.FutureTimeoutError:
        print(f"error: could not connect to {address} within {DEADLINE_SECONDS}s", file=sys.stderr)
        return 1
    except Mismatch as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

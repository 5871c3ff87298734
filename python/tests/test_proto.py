"""The agent's protocol module against the shared vectors of crates/scry-proto."""

import glob
import json
import os

import pytest

from conftest import VECTORS
from scry import _proto
from scry._proto import ProtocolError


def _message_vector_files():
    """The shared message vectors (expressions.json holds probe expressions, not messages:
    test_expressions reads it)."""
    files = sorted(f for f in glob.glob(os.path.join(VECTORS, "*.json")) if os.path.basename(f) != "expressions.json")
    assert len(files) >= 3, "expected the shared vectors in {}".format(VECTORS)
    return files


def _cases():
    out = []
    for path in _message_vector_files():
        with open(path, encoding="utf-8") as f:
            for case in json.load(f)["cases"]:
                out.append(pytest.param(case, id="{}:{}".format(os.path.basename(path), case["name"])))
    return out


@pytest.mark.parametrize("case", _cases())
def test_vector(case):
    if case["expect"] == "ok":
        msg = _proto.decode(case["raw"])
        assert msg["type"] == case["type"]
        # Round trip: what we encode decodes to the same message.
        line = _proto.encode(msg)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert _proto.decode(line) == msg
        # bytes in, same answer
        assert _proto.decode(case["raw"].encode("utf-8")) == msg
    else:
        assert case["expect"] in ("malformed", "unknown_type")
        with pytest.raises(ProtocolError) as info:
            _proto.decode(case["raw"])
        assert info.value.kind == case["expect"], info.value.message


def test_direction_decides_what_is_known():
    # The agent does not know agent-side types when decoding what the daemon sends.
    with pytest.raises(ProtocolError) as info:
        _proto.decode('{"type":"hello"}', _proto.DAEMON_TYPES)
    assert info.value.kind == "unknown_type"
    assert _proto.decode('{"type":"ping","id":3}', _proto.DAEMON_TYPES)["id"] == 3


def test_id_is_recovered_for_in_reply_to():
    with pytest.raises(ProtocolError) as info:
        _proto.decode('{"type":"frobnicate","id":12}')
    assert info.value.in_reply_to == 12
    with pytest.raises(ProtocolError) as info:
        _proto.decode('{"type":"ping","id":"x"}')
    assert info.value.kind == "malformed" and info.value.in_reply_to is None


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"ack","seq":1.0}',  # a float is not an integer (serde agrees)
        '{"type":"ack","seq":true}',
        '{"type":"ack","seq":18446744073709551616}',  # over u64
        '{"type":"ping","id":NaN}',
        '{"type":"report","seq":1,"events":[{"kind":"probe","t":Infinity}]}',
        '{"type":"error","kind":"exploded","message":"x"}',  # kind is an enum
        '{"type":"welcome","protocol":1,"daemon_version":"x","session_id":"s","settings":{"flush_interval_ms":5}}',
        '{"type":"hello","protocol":1,"agent_version":"0.1.0","pid":4242,"ppid":1,"host":"box",'
        '"origin":"embedded","python":{"version":"3","implementation":"cpython","executable":"/p"},'
        '"argv":[],"cwd":"/","started_at":1,"control":{"host":"h","port":70000}}',
        b'{"type":"ping","id":1,"x":"\xff"}',
    ],
)
def test_malformed_edges(raw):
    with pytest.raises(ProtocolError) as info:
        _proto.decode(raw)
    assert info.value.kind == "malformed"


def test_optional_fields_and_unknown_fields():
    assert _proto.decode('{"type":"goodbye"}')["type"] == "goodbye"
    assert _proto.decode('{"type":"report","seq":0,"events":[{"kind":"log","t":1}]}')["seq"] == 0
    assert _proto.decode('{"type":"heartbeat","extra":[1,2]}')["type"] == "heartbeat"
    assert _proto.decode('{"type":"ping","id":1}\r\n')["id"] == 1


def test_too_large():
    line = '{"type":"heartbeat","pad":"' + "x" * _proto.MAX_LINE_BYTES + '"}'
    with pytest.raises(ProtocolError) as info:
        _proto.decode(line)
    assert info.value.kind == "too_large"


def test_builders_produce_valid_messages():
    msgs = [
        _proto.hello(
            agent_version="0.1.0",
            pid=1,
            ppid=0,
            host="h",
            name=None,
            origin="embedded",
            python={"version": "3.11.7", "implementation": "cpython", "executable": "/x", "free_threaded": False},
            argv=["a"],
            cwd="/",
            started_at=1.5,
            capabilities=["control_plane"],
            control={"host": "127.0.0.1", "port": 1},
        ),
        _proto.reply_ok(1),
        _proto.reply_error(2, "bad_request", "no"),
        _proto.error("malformed", "bad", None),
        _proto.report(1, [{"kind": "pulse", "t": 1.0, "source": None, "data": {}}], 0),
        _proto.heartbeat(),
        _proto.goodbye("sleep"),
    ]
    for msg in msgs:
        assert _proto.decode(_proto.encode(msg)) == msg


def test_encode_refuses_what_json_cannot_carry():
    with pytest.raises(ValueError):
        _proto.encode({"type": "report", "x": float("nan")})


def _proof_cases():
    out = []
    for path in _message_vector_files():
        with open(path, encoding="utf-8") as f:
            for case in json.load(f)["cases"]:
                if "agent_proof" in case:
                    out.append(pytest.param(case, id=case["name"]))
    assert len(out) >= 3, "expected proof vectors in auth.json"
    return out


@pytest.mark.parametrize("case", _proof_cases())
def test_proofs_match_the_shared_vectors(case):
    challenge = _proto.decode(case["raw"], _proto.DAEMON_TYPES)
    token, agent_nonce, binding = case["token"], case["agent_nonce"], case["binding"]
    assert _proto.nonce_ok(agent_nonce) and _proto.nonce_ok(challenge["nonce"])
    assert _proto.daemon_proof(token, agent_nonce, challenge["nonce"], binding) == challenge["proof"]
    assert _proto.agent_proof(token, agent_nonce, challenge["nonce"], binding) == case["agent_proof"]
    assert _proto.daemon_proof(token, agent_nonce, challenge["nonce"], binding + "x") != challenge["proof"]
    assert _proto.daemon_proof("other", agent_nonce, challenge["nonce"], binding) != challenge["proof"]


def test_hello_carries_no_token_field():
    msg = _proto.hello("0.1.0", 1, 0, "h", None, "embedded", {"version": "3", "implementation": "c", "executable": "/p"}, [], "/", 1.0, [], None, proof="ab")
    assert "token" not in msg and msg["proof"] == "ab"
    assert not _proto.nonce_ok("AB" * 16) and not _proto.nonce_ok("ab" * 15) and _proto.nonce_ok("ab" * 16)

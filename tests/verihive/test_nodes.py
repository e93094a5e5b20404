"""Node homes and a multi-process testnet on loopback (tiny model). [NODE.2], [NODE.3]"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bft.assembler import AssemblerPolicy
from bft.crypto import SigningKey
from bft.join import (
    DEFAULT_STAMP_BITS,
    LEAVE_WINDOW_MS,
    JoinRequest,
    compute_stamp,
    compute_stamp_digest,
    get_stamp_bits,
    sign_join,
    sign_leave,
)
from bft.types import ModelId
from bft.validators import make_genesis
from proto import convert
from proto import verihive_pb2 as pb
from proto import verihive_pb2_grpc as pb_grpc
from verihive import nodecli, testnet
from verihive.cli import infer_main, verify_main
from verihive.logs import configure_logging
from verihive.node import (
    NodeError,
    create_node_key,
    load_admitted,
    load_config,
    load_genesis,
    load_node_key,
    write_config,
    write_genesis,
)
from verihive.rpc import INFER_TIMEOUT_S, MAX_OPEN_MESSAGE_BYTES, is_healthy, make_channel
from verihive.work import make_execute

# --- keys


def test_node_key_is_written_owner_only_and_never_overwritten(tmp_path):
    path = tmp_path / "node_key"
    key = create_node_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_node_key(path).public_key == key.public_key
    with pytest.raises(NodeError, match="already there"):
        create_node_key(path)
    assert load_node_key(path).public_key == key.public_key  # nothing lost


def test_invalid_node_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "node_key"
    create_node_key(path)
    path.chmod(0o644)
    with pytest.raises(NodeError, match="too open"):
        load_node_key(path)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_invalid_node_key_of_the_wrong_size(tmp_path, size):
    path = tmp_path / "node_key"
    path.write_bytes(b"\x01" * size)
    path.chmod(0o600)
    with pytest.raises(NodeError, match=f"not {size} bytes"):
        load_node_key(path)


# --- config


def test_config_written_by_init_loads_and_the_environment_overrides_it(tmp_path, monkeypatch):
    write_config(tmp_path, "executor", "127.0.0.1:7001")
    config = load_config(tmp_path)
    assert (config.node.role, config.node.listen, config.executor.chunk_size) == (
        "executor",
        "127.0.0.1:7001",
        16,
    )
    monkeypatch.setenv("VERIHIVE_NODE_LISTEN", "0.0.0.0:7002")
    monkeypatch.setenv("VERIHIVE_EXECUTOR_CHUNK_SIZE", "8")
    config = load_config(tmp_path)
    assert (config.node.listen, config.executor.chunk_size) == ("0.0.0.0:7002", 8)
    assert "# " in (tmp_path / "config.toml").read_text()  # every key is commented


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t.replace('listen = "127.0.0.1:7001"', 'listen = "nowhere"'), "node.listen"),
        (lambda t: t.replace('role = "executor"', 'role = "oracle"'), "node.role"),
        (lambda t: t.replace("chunk_size = 16", "chunk_size = 0"), "executor.chunk_size"),
        (lambda t: t + "\n[node2]\nx = 1\n", "node2"),
        (lambda t: t.replace("[node]", "[node"), "config.toml"),
    ],
    ids=["bad-address", "bad-role", "bad-chunk", "unknown-section", "toml-syntax"],
)
def test_invalid_config_names_the_file_and_key(tmp_path, edit, needle):
    write_config(tmp_path, "executor", "127.0.0.1:7001")
    path = tmp_path / "config.toml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(NodeError, match=needle) as info:
        load_config(tmp_path)
    assert str(path) in str(info.value)


# --- logs


def test_log_lines_are_json_with_node_event_and_request(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(logging.getLogger(), "handlers", list(logging.getLogger().handlers))
    level = logging.getLogger().level
    try:
        configure_logging("verifier/abc", stream=stream, as_json=True)
        logging.getLogger("x").info("vote %s", "accept", extra={"request_id": b"\x01" * 16})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("x").exception("failed")
    finally:
        logging.getLogger().setLevel(level)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines() if line)
    assert first["node"] == "verifier/abc" and first["event"] == "vote accept"
    assert first["request_id"] == "01" * 16 and first["level"] == "info"
    assert second["level"] == "error" and "ValueError: boom" in second["error"]


# --- genesis


def test_genesis_round_trip_and_tampering(tmp_path):
    keys = [SigningKey.generate() for _ in range(4)]
    policy = AssemblerPolicy("net-a", f=1)
    path = tmp_path / "genesis.json"
    assembler = SigningKey.generate().public_key
    write_genesis(path, policy, "tiny", make_genesis("net-a", keys), [assembler])
    loaded_policy, model, validators = load_genesis(path)
    assert (loaded_policy, model, len(validators.vset.validators)) == (policy, "tiny", 4)
    assert load_admitted(path) == {assembler}  # [ADMIT.1]
    data = json.loads(path.read_text())
    data["validator_set"]["endorsements"] = data["validator_set"]["endorsements"][:2]
    path.write_text(json.dumps(data))
    with pytest.raises(NodeError, match="not a valid genesis"):
        load_genesis(path)


def test_init_refuses_an_existing_home(tmp_path, capsys):
    home = tmp_path / "ex"
    assert nodecli.executor_main(["init", "--home", str(home)]) == 0
    assert "executor" in capsys.readouterr().out
    assert nodecli.executor_main(["init", "--home", str(home)]) == 2
    assert "already a node home" in capsys.readouterr().err


# --- a testnet: one process per node


def _infer(address: str, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    code = infer_main(["--assembler", address, "--max-new-tokens", "4", "--json", "Hello?"])
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    assert code == (0 if result["accepted"] else 1)
    return result


def _reflected_services(address: str) -> set[str]:
    """Return the services the node at ``address`` lists through server reflection."""
    channel = make_channel(address)
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([ask]), timeout=10))
        return {s.name for s in reply.list_services_response.service}
    finally:
        channel.close()


def test_testnet_init_prints_json_nodes_with_ports_below_the_ephemeral_range(tmp_path, capsys):
    out = tmp_path / "net"
    assert nodecli.testnet_main(["init", "--out", str(out), "--model", "tiny", "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)
    assert [n["role"] for n in nodes] == ["verifier"] * 4 + ["executor"] * 2 + ["assembler"]
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [int(n["address"].rpartition(":")[2]) for n in nodes]
    assert len(set(ports)) == 7 and all(testnet.PORT_FLOOR <= p < max(low, 20001) for p in ports)
    assert all(load_config(Path(n["home"])).node.listen == n["address"] for n in nodes)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, testnet.Node]]:
    """A 7-process testnet of the tiny model, up for this module's tests."""
    out = tmp_path_factory.mktemp("testnet") / "net"
    assert nodecli.testnet_main(["init", "--out", str(out), "--model", "tiny"]) == 0
    nodes = {n.name: n for n in testnet.get_nodes(out)}
    assert len(nodes) == 7
    try:
        assert nodecli.testnet_main(["up", str(out)]) == 0
        yield nodes
    finally:
        assert nodecli.testnet_main(["down", str(out)]) == 0
        for n in nodes.values():
            assert not testnet.is_serving(n.address)
            assert not (n.home / "pid").exists()


def _metrics(node: testnet.Node) -> str:
    address = (node.home / "metrics_address").read_text().strip()
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def _sample(text: str, name: str, **labels: str) -> float:
    """Return the value of sample ``name`` with ``labels`` in exposition ``text`` (0 if none)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_testnet_nodes_answer_health_reflection_and_requests(running, capsys):
    capsys.readouterr()
    for n in running.values():  # gRPC health checking and reflection on every node
        assert is_healthy(n.address), n.name
        assert f"verihive.v1.{n.role.capitalize()}" in _reflected_services(n.address), n.name
    assert _infer(running["assembler"].address, capsys)["accepted"] is True
    assert verify_main(["status", running["verifier-0"].address, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["role"] == "verifier" and status["network_id"] == "verihive-testnet"
    # [NODE.4]: what each role did, on its /metrics
    assembler = _metrics(running["assembler"])
    assert _sample(assembler, "verihive_requests_total", outcome="certified") >= 1
    assert _sample(assembler, "verihive_certification_seconds_count") >= 1
    votes = sum(
        _sample(_metrics(running[f"verifier-{i}"]), "verihive_votes_total", verdict="accept")
        for i in range(4)
    )
    assert votes >= 4  # the committee of 3f+1 = 4 of the 4 verifiers
    assert _sample(_metrics(running["executor-0"]), "verihive_executions_total") >= 1
    assert _sample(_metrics(running["executor-0"]), "verihive_opened_bytes_total") > 0
    assert _sample(assembler, "verihive_model_load_seconds") > 0
    # [NODE.5]: the assembler's log is JSON lines naming the node, the event and the request
    lines = (running["assembler"].home / "node.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    certified = [e for e in events if e["event"].startswith("attempt certified")]
    assert certified and all(e["node"].startswith("assembler/") for e in certified)
    assert all(len(e["request_id"]) == 32 for e in certified)  # 16 bytes, hex


def test_status_of_each_role_names_its_peers_load_and_recent_verdicts(running, capsys):
    """[NODE.9]: after a request, each node tells what it did with it."""
    capsys.readouterr()
    assembler = running["assembler"]
    assert _infer(assembler.address, capsys)["accepted"] is True
    assert nodecli.assembler_main(["status", assembler.address, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["role"] == "assembler" and data["in_flight"] == 0
    assert data["counts"]["certified"] >= 1 and data["uptime_s"] > 0
    keys = {n.name: load_node_key(n.home / "node_key").public_key.hex() for n in running.values()}
    peers = {(p["role"], p["public_key"], p["source"], p["state"]) for p in data["peers"]}
    assert peers == {
        *(("executor", keys[f"executor-{i}"], "config", "routed") for i in range(2)),
        *(("verifier", keys[f"verifier-{i}"], "genesis", "validator") for i in range(4)),
    }
    certified = data["recent"][0]
    assert certified["event"] == "certified" and len(certified["request_id"]) == 32
    # The same request, seen by a verifier of its committee and by the executor that ran it.
    assert verify_main(["status", "--home", str(running["verifier-0"].home), "--json"]) == 0
    verifier = json.loads(capsys.readouterr().out)
    assert verifier["counts"]["accept"] >= 1
    assert {"event": "accept", "request_id": certified["request_id"]}.items() <= next(
        e for e in verifier["recent"] if e["request_id"] == certified["request_id"]
    ).items()
    assert nodecli.executor_main(["status", "--home", str(running["executor-0"].home)]) == 0
    table = capsys.readouterr().out
    assert f"public_key         {keys['executor-0']}" in table
    assert "tokens/s" in table and "executed " in table
    assert certified["request_id"][:12] in table  # in the recent list
    assert nodecli.executor_main(["status", "--home", str(running["assembler"].home / "x")]) == 2
    assert "not serving" in capsys.readouterr().err


def test_metrics_of_every_node_pass_promtool(running):
    promtool = shutil.which("promtool")
    if promtool is None:
        script = Path(__file__).resolve().parents[2] / "tools" / "ci" / "debian.sh"
        done = subprocess.run([str(script), "prometheus"], capture_output=True, timeout=900)
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip(f"promtool missing and not installable: {done.stderr.decode()[-200:]}")
    for n in running.values():
        check = subprocess.run(
            [promtool, "check", "metrics"], input=_metrics(n).encode(), capture_output=True
        )
        assert check.returncode == 0, (n.name, check.stdout, check.stderr)


def test_testnet_carries_on_when_an_executor_is_killed(running, capsys):
    capsys.readouterr()
    # Kill executor-0 outright: the assembler moves on to executor-1. [ASM.1]
    pid = int((running["executor-0"].home / "pid").read_text())
    os.kill(pid, signal.SIGKILL)
    while testnet.is_serving(running["executor-0"].address):
        time.sleep(0.1)
    second = _infer(running["assembler"].address, capsys)
    assert second["accepted"] is True
    attempts = second["attempts"]
    assert isinstance(attempts, list)
    failed, served = attempts
    assert failed["outcome"] == "failed" and "execute failed" in failed["reason"]
    assert served["outcome"] == "certified"


def _join_message(key: SigningKey, address: str, model_id: bytes, nonce: int) -> pb.JoinRequest:
    unsigned = JoinRequest(
        "verihive-testnet",
        key.public_key,
        address,
        ModelId(model_id),
        "torch-cpu-float32",
        0.0,
        nonce,
    )
    return convert.join_to_pb(sign_join(key, unsigned))


def test_invalid_joins_are_refused_with_a_reason(running):
    assembler = running["assembler"].address
    channel = make_channel(assembler)
    stub = pb_grpc.AssemblerStub(channel)
    model_id = stub.GetInfo(pb.NodeInfoRequest(), timeout=10).model_id
    stranger = SigningKey.generate()
    good_nonce = compute_stamp("verihive-testnet", stranger.public_key, DEFAULT_STAMP_BITS)
    try:
        # Nobody serves at this address: the reachability probe fails.
        dead = f"127.0.0.1:{testnet.get_free_port('127.0.0.1')}"
        reply = stub.Join(_join_message(stranger, dead, model_id, good_nonce), timeout=60)
        assert not reply.accepted and "cannot be reached" in reply.reason
        # A live executor's address, claimed by another key: the probe sees the real key.
        taken = running["executor-1"].address
        reply = stub.Join(_join_message(stranger, taken, model_id, good_nonce), timeout=60)
        assert not reply.accepted and "another key" in reply.reason
        # No work: a nonce whose stamp is too weak.
        weak = next(
            n
            for n in range(1000)
            if get_stamp_bits(compute_stamp_digest("verihive-testnet", stranger.public_key, n))
            < DEFAULT_STAMP_BITS
        )
        reply = stub.Join(_join_message(stranger, taken, model_id, weak), timeout=60)
        assert not reply.accepted and "stamp" in reply.reason
        with pytest.raises(grpc.RpcError) as info:  # malformed: no signature at all
            stub.Join(pb.JoinRequest(network_id="verihive-testnet"), timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # [NODE.4]: joins refused, by reason
        exposition = _metrics(running["assembler"])
        for why in ("unreachable", "wrong-key", "stamp"):
            assert _sample(exposition, "verihive_joins_total", outcome="refused", reason=why) == 1
        assert _sample(exposition, "verihive_joins_total", outcome="malformed") == 1
    finally:
        channel.close()


def test_third_executor_joins_a_running_network_and_serves(running, tmp_path, capsys):
    # Runs after the executor-0 kill: with executor-1 killed too, only the joined one is left.
    home = tmp_path / "executor-2"
    genesis = running["assembler"].home.parent / "genesis.json"
    listen = f"127.0.0.1:{testnet.get_free_port('127.0.0.1')}"
    args = ["init", "--home", str(home), "--listen", listen, "--genesis", str(genesis)]
    assert nodecli.executor_main(args) == 0
    log = (home / "node.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "verihive.nodecli", "serve", "--home", str(home)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        node = testnet.Node("executor-2", home, "executor", listen)
        testnet.wait_until_serving(node, proc, 120)
        capsys.readouterr()
        assembler = running["assembler"].address
        join = ["join", "--home", str(home), "--assembler", assembler]
        assert nodecli.executor_main(join) == 0
        assert capsys.readouterr().out.startswith("joined")
        assert nodecli.executor_main(join) == 0  # again, e.g. after a restart
        assert "re-joined" in capsys.readouterr().out
        pid = int((running["executor-1"].home / "pid").read_text())
        os.kill(pid, signal.SIGKILL)
        while testnet.is_serving(running["executor-1"].address):
            time.sleep(0.1)
        result = _infer(assembler, capsys)
        assert result["accepted"] is True
        attempts = result["attempts"]
        assert isinstance(attempts, list) and attempts[-1]["outcome"] == "certified"
        executor_id = SigningKey.from_seed((home / "node_key").read_bytes()).node_id.hex()
        assert attempts[-1]["executor"] == executor_id
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_executor_announces_itself_and_leaves_on_sigterm(running, tmp_path, capsys):
    """[JOIN.3], [JOIN.4]: an executor whose config names the assembler joins it when it
    serves and again every announce_s; a signed leave stops routing to it, a replayed or stale
    one is refused; SIGTERM leaves before the node stops."""
    assembler = running["assembler"].address
    home = tmp_path / "executor-3"
    genesis = running["assembler"].home.parent / "genesis.json"
    listen = f"127.0.0.1:{testnet.get_free_port('127.0.0.1')}"
    init = ["init", "--home", str(home), "--listen", listen, "--genesis", str(genesis)]
    assert nodecli.executor_main([*init, "--assembler", assembler]) == 0
    node = testnet.Node("executor-3", home, "executor", listen)
    proc = testnet.start_node(node, {"VERIHIVE_EXECUTOR_ANNOUNCE_S": "1"})
    key = load_node_key(home / "node_key")
    try:
        testnet.wait_until_serving(node, proc, 120)
        joined = _wait_for_peer(assembler, key.public_key.hex(), present=True)
        assert joined["source"] == "joined" and joined["state"] == "routed"
        assert joined["tokens_per_second"] > 0  # measured when it started [JOIN.1]
        capsys.readouterr()
        result = _infer(assembler, capsys)  # executors 0-2 are gone: only this one is left
        attempts = result["attempts"]
        assert isinstance(attempts, list) and attempts[-1]["outcome"] == "certified"
        assert attempts[-1]["executor"] == key.node_id.hex()
        channel = make_channel(assembler)
        try:
            stub = pb_grpc.AssemblerStub(channel)
            now_ms = time.time_ns() // 1_000_000
            leave = convert.leave_to_pb(sign_leave(key, "verihive-testnet", now_ms))
            reply = stub.Leave(leave, timeout=10)
            assert reply.accepted and reply.reason == "left"
            _wait_for_peer(assembler, key.public_key.hex(), present=True)  # announced again
            reply = stub.Leave(leave, timeout=10)
            assert not reply.accepted and "replayed" in reply.reason
            stale = sign_leave(key, "verihive-testnet", now_ms - LEAVE_WINDOW_MS - 60_000)
            reply = stub.Leave(convert.leave_to_pb(stale), timeout=10)
            assert not reply.accepted and "stale" in reply.reason
            stranger = sign_leave(SigningKey.generate(), "verihive-testnet", now_ms + 1)
            reply = stub.Leave(convert.leave_to_pb(stranger), timeout=10)
            assert not reply.accepted and "not routed to" in reply.reason
        finally:
            channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _wait_for_peer(assembler, key.public_key.hex(), present=False)  # it left on the way out
        assert "leave 127.0.0.1" in (home / "node.log").read_text()
        # Restarted, it joins again by itself; killed outright (no leave), it stays routed until
        # its join expires, and joins again when restarted.
        proc = testnet.start_node(node, {"VERIHIVE_EXECUTOR_ANNOUNCE_S": "1"})
        testnet.wait_until_serving(node, proc, 120)
        _wait_for_peer(assembler, key.public_key.hex(), present=True)
        proc.kill()
        proc.wait()
        assert _wait_for_peer(assembler, key.public_key.hex(), present=True)["state"] == "routed"
        proc = testnet.start_node(node, {"VERIHIVE_EXECUTOR_ANNOUNCE_S": "1"})
        testnet.wait_until_serving(node, proc, 120)
        assert nodecli.executor_main(["status", "--home", str(home), "--json"]) == 0
        capsys.readouterr()
        assert _wait_for_announcement(home, "re-joined")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_announcement(home: Path, state: str) -> bool:
    """Return whether the executor of ``home`` reports ``state`` for its assembler within 60 s."""
    address = (home / "address").read_text().strip()
    channel = make_channel(address)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = pb_grpc.ExecutorStub(channel).Status(pb.StatusRequest(), timeout=10)
            if any(p.state == state for p in status.peers):
                return True
            time.sleep(0.2)
        return False
    finally:
        channel.close()


def _wait_for_peer(assembler: str, public_key: str, present: bool) -> dict[str, object]:
    """Return the assembler's peer entry for ``public_key`` once it is there (or gone)."""
    channel = make_channel(assembler)
    try:
        stub = pb_grpc.AssemblerStub(channel)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = nodecli.status_to_dict(assembler, stub.Status(pb.StatusRequest(), timeout=10))
            found = [p for p in status["peers"] if p["public_key"] == public_key]
            if bool(found) == present:
                return found[0] if found else {}
            time.sleep(0.2)
    finally:
        channel.close()
    raise AssertionError(f"{public_key[:16]} still {'absent' if present else 'present'}")


def _refuses_new_calls(address: str) -> bool:
    """Return whether a new call to ``address`` fails within 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        channel = make_channel(address)
        try:
            pb_grpc.ExecutorStub(channel).Status(pb.StatusRequest(), timeout=2)
        except grpc.RpcError:
            return True
        finally:
            channel.close()
        time.sleep(0.05)
    return False


def test_sigterm_lets_the_call_in_flight_finish_and_refuses_new_ones(running, tmp_path):
    """[NODE.2]: SIGTERM reports NOT_SERVING, takes no new calls and lets those in flight end."""
    home = tmp_path / "executor-4"
    genesis = running["assembler"].home.parent / "genesis.json"
    listen = f"127.0.0.1:{testnet.get_free_port('127.0.0.1')}"
    init = ["init", "--home", str(home), "--listen", listen, "--genesis", str(genesis)]
    assert nodecli.executor_main(init) == 0
    node = testnet.Node("executor-4", home, "executor", listen)
    proc = testnet.start_node(node)
    try:
        testnet.wait_until_serving(node, proc, 120)
        channel = make_channel(running["assembler"].address, MAX_OPEN_MESSAGE_BYTES)
        try:
            reply = pb_grpc.AssemblerStub(channel).Infer(
                pb.InferRequest(prompt="Hello?"), timeout=INFER_TIMEOUT_S
            )
        finally:
            channel.close()
        # Every executor of the testnet is gone by now: the attempts still carry the request.
        assert reply.attempts[-1].HasField("request")
        raw = reply.attempts[-1].request  # a request of this network, made longer
        raw.sampling.max_new_tokens = 1024  # long enough to be caught in flight
        raw.sampling.stop_at_eos = False
        assembler_key = load_node_key(running["assembler"].home / "node_key")
        ask = make_execute(assembler_key, convert.request_from_pb(raw))
        request = ask.request
        answers: list[object] = []
        channel = make_channel(listen, MAX_OPEN_MESSAGE_BYTES)
        stub = pb_grpc.ExecutorStub(channel)

        def execute() -> None:
            try:
                answers.append(stub.Execute(ask, timeout=120))
            except grpc.RpcError as exc:
                answers.append(exc)

        worker = threading.Thread(target=execute)
        worker.start()
        while stub.Status(pb.StatusRequest(), timeout=10).in_flight == 0:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        while is_healthy(listen):  # NOT_SERVING at once, while the call runs on
            time.sleep(0.01)
        assert _refuses_new_calls(listen)
        worker.join(timeout=120)
        channel.close()
        (answer,) = answers
        assert isinstance(answer, pb.ExecuteResponse), answer  # the call in flight finished
        assert len(answer.commitment.commitment.tokens) == len(request.prompt_tokens) + 1024
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""A testnet with every node on a host of its own: one network namespace per node. [NODE.6]

The fixture builds, per run, a bridge in a namespace of its own (the hub), one namespace per
node joined to the hub by a veth pair with an address on a private /24, and one veth pair from
this (root) namespace to the hub, so the test reaches every node at its address the way a client
on another machine would. Needs root and iproute2 (installed with ``tools/ci/debian.sh
iproute2`` where missing); skips saying why otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bft.assembler import AssemblerPolicy
from bft.crypto import SigningKey
from verihive import testnet
from verihive.cli import infer_main
from verihive.node import NodeError

pytestmark = pytest.mark.multihost

PREFIX = "vhmh"
"""Every namespace and root-side link this test makes starts with it, then the run's pid."""

NETEM = ("delay", "20ms", "loss", "1%")
"""What ``tc netem`` adds on every veth in the impaired test: 20 ms each way and 1 % loss."""


@dataclass(frozen=True)
class Hosts:
    """The namespaces of one run: ``ns``, ``link`` and ``address`` (an IP) by node name; the
    root-side link; the ``ip`` command."""

    ip: str
    ns: dict[str, str]
    link: dict[str, str]
    address: dict[str, str]
    root_link: str


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done


def _get_ip() -> str:
    """Return the ``ip`` command, installing iproute2 if missing; skip if that fails."""
    ip = shutil.which("ip")
    if ip is None:
        script = Path(__file__).resolve().parents[2] / "tools" / "ci" / "debian.sh"
        done = subprocess.run([str(script), "iproute2"], capture_output=True, timeout=900)
        ip = shutil.which("ip")
        if ip is None:
            pytest.skip(f"ip missing and iproute2 not installable: {done.stderr.decode()[-200:]}")
    return ip


def _remove_leftovers(ip: str, keep_alive: bool) -> None:
    """Delete this test's namespaces and links of runs no longer alive (``keep_alive``) or of
    this run."""

    def is_ours(pid: int) -> bool:
        return not keep_alive or pid == os.getpid() or not _is_alive(pid)

    for name in _run(ip, "netns", "list").stdout.split():
        match = re.fullmatch(rf"{PREFIX}(\d+)-.+", name)
        if match is None or not is_ours(int(match.group(1))):
            continue  # not this test's, or a run beside this one
        for stray in _run(ip, "netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stray), signal.SIGKILL)  # a node this test started, left behind
        _run(ip, "netns", "delete", name, check=False)
    links = re.findall(rf"^\d+: ({PREFIX}(\d+)h?)[@:]", _run(ip, "-o", "link").stdout, re.M)
    for link, pid in links:  # a root-side link whose peer never reached the hub
        if is_ours(int(pid)):
            _run(ip, "link", "delete", link, check=False)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _get_subnet(ip: str) -> str:
    """Return the first three octets of a 10.213.x.0/24 nobody here routes to yet."""
    used = _run(ip, "-4", "route", "show", "table", "all").stdout
    used += _run(ip, "-4", "-o", "addr", "show").stdout
    start = os.getpid() % 254
    for k in range(254):
        prefix = f"10.213.{(start + k) % 254 + 1}"
        if f"{prefix}." not in used:
            return prefix
    pytest.skip("no free 10.213.x.0/24 subnet")


def _make_hosts(ip: str, names: list[str]) -> Hosts:
    """Make the hub, a namespace per node in ``names`` and the links; return what was made."""
    tag = f"{PREFIX}{os.getpid()}"
    hub = f"{tag}-hub"
    done = _run(ip, "netns", "add", hub, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {done.stderr.strip()}")
    subnet = _get_subnet(ip)
    _run(ip, "-n", hub, "link", "set", "lo", "up")
    _run(ip, "-n", hub, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
    _run(ip, "-n", hub, "link", "set", "br0", "up")
    # This namespace's way in: deleting the hub deletes both ends.
    root_link = f"{PREFIX}{os.getpid()}"
    _run(ip, "link", "add", root_link, "type", "veth", "peer", "name", f"{root_link}h")
    _run(ip, "link", "set", f"{root_link}h", "netns", hub)
    _run(ip, "-n", hub, "link", "set", f"{root_link}h", "master", "br0", "up")
    _run(ip, "addr", "add", f"{subnet}.1/24", "dev", root_link)
    _run(ip, "link", "set", root_link, "up")
    namespaces, links, addresses = {}, {}, {}
    for i, name in enumerate(names):
        ns, link = f"{tag}-{name}", f"n{i}"
        _run(ip, "netns", "add", ns)
        _run(ip, "-n", hub, "link", "add", f"p{i}", "type", "veth", "peer", "name", link)
        _run(ip, "-n", hub, "link", "set", link, "netns", ns)
        _run(ip, "-n", hub, "link", "set", f"p{i}", "master", "br0", "up")
        addresses[name] = f"{subnet}.{10 + i}"
        _run(ip, "-n", ns, "addr", "add", f"{addresses[name]}/24", "dev", link)
        _run(ip, "-n", ns, "link", "set", link, "up")
        _run(ip, "-n", ns, "link", "set", "lo", "up")
        namespaces[name], links[name] = ns, link
    return Hosts(ip, namespaces, links, addresses, root_link)


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    """A namespace per node of a 4-verifier, 2-executor testnet, joined by a bridge."""
    if os.geteuid() != 0:
        pytest.skip(f"network namespaces need root (uid {os.geteuid()})")
    ip = _get_ip()
    _remove_leftovers(ip, keep_alive=True)  # leftovers of aborted runs
    names = [f"verifier-{i}" for i in range(4)] + ["executor-0", "executor-1", "assembler"]
    try:
        yield _make_hosts(ip, names)
    finally:
        _remove_leftovers(ip, keep_alive=False)


@pytest.fixture(scope="module")
def running(
    hosts: Hosts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, testnet.Node]]:
    """The tiny-model testnet, each node serving in its own namespace at its own address."""
    out = tmp_path_factory.mktemp("multihost") / "net"
    policy = AssemblerPolicy("verihive-testnet", f=1)
    nodes = {n.name: n for n in testnet.init_testnet(out, 4, 2, "tiny", policy, hosts.address)}
    with pytest.MonkeyPatch.context() as mp:
        for var in ("http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            mp.delenv(var, raising=False)  # the nodes' addresses are private: no proxy
        try:
            testnet.up(out, 120, wrap=lambda n: [hosts.ip, "netns", "exec", hosts.ns[n.name]])
            yield nodes
        finally:
            testnet.down(out)


def test_init_gives_a_named_node_its_host_at_fixed_ports(tmp_path):
    policy = AssemblerPolicy("verihive-testnet", f=1)
    hosts = {"executor-1": "10.0.0.5", "assembler": "10.0.0.6"}
    nodes = {n.name: n for n in testnet.init_testnet(tmp_path / "a", 4, 2, "tiny", policy, hosts)}
    assert nodes["executor-1"].address == "10.0.0.5:7010"  # the sixth node: 7000 + 2 * 5
    assert nodes["verifier-0"].address.startswith(f"{testnet.LOCAL_HOST}:")
    assembler = (nodes["assembler"].home / "config.toml").read_text()
    assert '"10.0.0.5:7010"' in assembler and 'metrics = "10.0.0.6:7013"' in assembler
    with pytest.raises(NodeError, match="no such node: executor-9"):
        testnet.init_testnet(tmp_path / "b", 4, 2, "tiny", policy, {"executor-9": "10.0.0.7"})


def _infer(address: str, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    code = infer_main(["--assembler", address, "--max-new-tokens", "4", "--json", "Hello?"])
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    assert code == (0 if result["accepted"] else 1)
    return result


def _metrics(node: testnet.Node) -> tuple[str, str]:
    """Return the address ``node`` serves metrics at and the exposition it serves there."""
    address = (node.home / "metrics_address").read_text().strip()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{address}/metrics", timeout=10) as reply:
        return address, str(reply.read().decode())


def _sample(text: str, name: str, **labels: str) -> float:
    """Return the value of sample ``name`` with ``labels`` in exposition ``text`` (0 if none)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_testnet_with_a_namespace_per_node_answers(hosts, running, capsys):
    for name, n in running.items():  # each node runs in its own namespace, at its own host
        pid = (n.home / "pid").read_text().strip()
        assert _run(hosts.ip, "netns", "identify", pid).stdout.strip() == hosts.ns[name]
        assert n.address.rpartition(":")[0] == hosts.address[name]
    capsys.readouterr()
    assert _infer(running["assembler"].address, capsys)["accepted"] is True
    address, text = _metrics(running["assembler"])
    assert address.rpartition(":")[0] == running["assembler"].address.rpartition(":")[0]
    assert _sample(text, "verihive_requests_total", outcome="certified") >= 1
    _, text = _metrics(running["verifier-2"])
    assert _sample(text, "verihive_votes_total", verdict="accept", check="none") >= 1


@pytest.fixture
def netem(hosts: Hosts) -> Iterator[None]:
    """Add ``tc netem`` delay and loss on every veth end outside the hub; skip if unavailable."""
    tc = shutil.which("tc")
    if tc is None:
        pytest.skip("tc missing (iproute2)")
    ends = [(None, hosts.root_link)] + [(hosts.ns[n], hosts.link[n]) for n in hosts.ns]

    def tc_in(ns: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        prefix = [hosts.ip, "netns", "exec", ns] if ns is not None else []
        return _run(*prefix, tc, *args, check=False)

    add = ("qdisc", "add", "dev", hosts.root_link, "root", "netem", *NETEM)
    done = tc_in(None, *add)
    if done.returncode != 0 and shutil.which("modprobe") is not None:
        _run("modprobe", "sch_netem", check=False)
        done = tc_in(None, *add)
    if done.returncode != 0:
        pytest.skip(f"tc netem unavailable: {done.stderr.strip()}")
    try:
        for ns, link in ends[1:]:
            done = tc_in(ns, "qdisc", "add", "dev", link, "root", "netem", *NETEM)
            assert done.returncode == 0, done.stderr
        yield
    finally:
        for ns, link in ends:
            tc_in(ns, "qdisc", "del", "dev", link, "root")


def test_requests_are_certified_over_delay_and_loss(running, netem, capsys):
    capsys.readouterr()
    for _ in range(3):
        assert _infer(running["assembler"].address, capsys)["accepted"] is True


def test_killed_executor_leaves_the_other_to_serve(running, capsys):
    capsys.readouterr()
    pid = int((running["executor-0"].home / "pid").read_text())
    os.kill(pid, signal.SIGKILL)  # its namespace stays; its sockets close
    while testnet.is_serving(running["executor-0"].address):
        time.sleep(0.1)
    result = _infer(running["assembler"].address, capsys)
    assert result["accepted"] is True
    attempts = result["attempts"]
    assert isinstance(attempts, list) and attempts[-1]["outcome"] == "certified"
    other = SigningKey.from_seed((running["executor-1"].home / "node_key").read_bytes())
    assert attempts[-1]["executor"] == other.node_id.hex()

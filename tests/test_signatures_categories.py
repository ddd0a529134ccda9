"""The built-in signatures cover every disallowed category, recognise disguised tools, and leave
honest look-alikes alone (on recorded process data; the scenario tests run the real programs)."""

from __future__ import annotations

import pytest

from colab_guard.detect.engine import example_matches
from colab_guard.detect.fields import FIELDS, FieldView
from colab_guard.detect.signatures import SignatureError, load_signatures, parse_text
from colab_guard.observe.model import Process

RULES = load_signatures()
ISSUE_CATEGORIES = {"crypto-mining", "torrenting", "password-cracking", "deepfake", "remote-access",
                    "proxy", "denial-of-service", "scanning", "web-hosting"}


def matching(process: dict) -> set[str]:
    """Categories of the built-in signatures that match (their `for:` window held)."""
    proc = Process.from_dict({"pid": 4242, **process})
    return {sig.category for sig in RULES.signatures.values()
            if not getattr(sig, "on_cells", False) and example_matches(sig, proc)}


def test_every_disallowed_category_has_signatures_that_look_at_content_or_behaviour():
    by_category: dict[str, set[str]] = {}
    for sig in RULES.signatures.values():
        by_category.setdefault(sig.category, set()).add(sig.id)
    assert ISSUE_CATEGORIES <= set(by_category)
    for category in ISSUE_CATEGORIES - {"web-hosting"}:
        # each category has a rule that survives a rename (content, options or behaviour)
        assert len(by_category[category]) >= 2, category


def _listen(port, ip="0.0.0.0"):
    return {"local_ip": ip, "local_port": port, "status": "LISTEN"}


def _peer(ip, port, local_port=0, status="ESTABLISHED"):
    return {"remote_ip": ip, "remote_port": port, "local_port": local_port, "status": status}


DISGUISED = [
    ("xmrig copied to kworker", "crypto-mining",
     {"name": "kworker", "cmdline": ["/tmp/kworker"], "exe_markers": ["xmrig"],
      "sockets": [_peer("10.0.0.1", 14444)]}),
    ("GPU miner by name", "crypto-mining", {"name": "gminer", "cmdline": ["./gminer", "-a", "kawpow"]}),
    ("ctorrent copied to kworker", "torrenting",
     {"name": "kworker", "exe_markers": ["ctorrent"], "sockets": [_peer("127.0.0.1", 6969)]}),
    ("aria2c renamed, magnet", "torrenting",
     {"name": "fetch", "cmdline": ["./fetch", "magnet:?xt=urn:btih:" + "a" * 40],
      "libraries": ["/usr/lib/x86_64-linux-gnu/libaria2.so.0.0.0"], "sockets": [_listen(6881)]}),
    ("libtorrent wheel in the kernel", "torrenting",
     {"name": "python3", "is_kernel": True,
      "libraries": ["/venv/lib/python3.11/site-packages/libtorrent/__init__.cpython-311-x86_64-linux-gnu.so"]}),
    ("john copied to render", "password-cracking",
     {"name": "render", "cmdline": ["./render", "--incremental", "h.txt"], "exe_markers": ["john"]}),
    ("face swap model opened by the kernel", "deepfake",
     {"name": "python3", "is_kernel": True, "open_files": ["/root/.insightface/models/inswapper_128.onnx"]}),
    ("dropbear copied to dbus-daemon", "remote-access",
     {"name": "dbus-daemon", "exe_markers": ["dropbear"], "sockets": [_listen(2222, "127.0.0.1")]}),
    ("tor configured by torrc only", "proxy",
     {"name": "updater", "cmdline": ["./updater", "-f", "conf"], "exe_markers": ["tor"],
      "sockets": [_listen(9050, "127.0.0.1")]}),
    ("hping3 copied", "denial-of-service", {"name": "kworker", "exe_markers": ["hping3"]}),
    ("nmap copied to update", "scanning", {"name": "update", "exe_markers": ["nmap"]}),
    ("port scan fan-out", "scanning",
     {"name": "probe", "sockets": [_peer("10.9.9.9", p, status="SYN_SENT") for p in range(1, 151)]}),
    ("public server, many clients", "web-hosting",
     {"name": "python3", "sockets": [_listen(8000)] + [_peer(f"10.1.1.{i}", 50000 + i, 8000) for i in range(8)]}),
]


@pytest.mark.parametrize("what, category, process", DISGUISED, ids=[d[0] for d in DISGUISED])
def test_disguised_abuse_is_recognised(what, category, process):
    assert category in matching(process)


BENIGN = [
    ("GPU training", {"name": "python3", "is_kernel": True, "cpu_percent": 400, "threads": 64,
                      "cmdline": ["python3", "-m", "ipykernel_launcher"],
                      "libraries": ["/venv/site-packages/torch/lib/libtorch_cuda.so"]}),
    ("hashing-heavy data work", {"name": "python3", "cpu_percent": 100,
                                 "cmdline": ["python3", "dedupe.py", "--hash", "sha256"]}),
    ("pip install", {"name": "pip", "cmdline": ["pip", "install", "torrent-parser", "xmrig-stats"],
                     "sockets": [_peer("10.2.0.1", 443), _peer("10.2.0.2", 443)]}),
    ("conda install", {"name": "conda", "cmdline": ["conda", "install", "-y", "nmap-python"]}),
    ("apt-get", {"name": "apt-get", "cmdline": ["apt-get", "install", "-y", "tor-geoip"]}),
    ("aria2c parallel HTTP", {"name": "aria2c", "cmdline": ["aria2c", "-x", "16", "https://example.org/d.tar"],
                              "libraries": ["/usr/lib/x86_64-linux-gnu/libaria2.so.0"],
                              "sockets": [_peer(f"10.3.0.{i}", 443) for i in range(16)]}),
    ("TensorBoard on 0.0.0.0", {"name": "tensorboard", "cmdline": ["tensorboard", "--logdir", "runs", "--bind_all"],
                                "sockets": [_listen(6006), _peer("127.0.0.1", 50001, 6006)]}),
    ("Gradio on loopback", {"name": "python3", "cmdline": ["python3", "app.py"],
                            "sockets": [_listen(7860, "127.0.0.1"), _peer("127.0.0.1", 50002, 7860)]}),
    ("dev server on port 1080", {"name": "node", "cmdline": ["node", "server.js", "--port", "1080"],
                                 "sockets": [_listen(1080), _peer("127.0.0.1", 50003, 1080)]}),
    ("gcc", {"name": "cc1", "cmdline": ["/usr/lib/gcc/x86_64-linux-gnu/12/cc1", "-quiet", "miner.c"]}),
    ("insightface detection", {"name": "python3", "is_kernel": True,
                               "open_files": ["/root/.insightface/models/buffalo_l/det_10g.onnx"]}),
    ("face_recognition", {"name": "face_recognition", "cmdline": ["face_recognition", "known/", "unknown/"]}),
    ("mediapipe", {"name": "python3", "cmdline": ["python3", "-m", "mediapipe.examples.face_mesh"]}),
    ("named data-miner", {"name": "data-miner", "cmdline": ["data-miner", "--crawl", "site"], "cpu_percent": 90}),
    ("named torrent-indexer", {"name": "torrent-indexer", "cmdline": ["torrent-indexer", "db.sqlite"],
                               "sockets": [_peer("10.4.0.1", 443)]}),
    ("ssh client and -L tunnel", {"name": "ssh", "cmdline": ["ssh", "-L", "5432:db:5432", "me@bastion"],
                                  "sockets": [_peer("10.5.0.1", 22)]}),
    ("bash port check", {"name": "bash", "cmdline": ["bash", "-c", "</dev/tcp/127.0.0.1/8888"]}),
    ("dask scheduler", {"name": "python3", "sockets": [_listen(8786, "127.0.0.1")]
                        + [_peer("127.0.0.1", 40000 + i, 8786) for i in range(8)]}),
    ("web crawler", {"name": "scrapy", "cmdline": ["scrapy", "crawl", "docs"],
                     "sockets": [_peer(f"10.6.{i}.1", 443) for i in range(40)]}),
]


@pytest.mark.parametrize("what, process", BENIGN, ids=[b[0] for b in BENIGN])
def test_honest_look_alikes_match_nothing(what, process):
    assert matching(process) == set()


def test_new_fields_read_sockets_as_documented():
    proc = Process.from_dict({"pid": 1, "sockets": [
        _listen(8000), _listen(9000, "127.0.0.1"), _peer("10.0.0.1", 5000, 8000),
        _peer("10.0.0.2", 5001, 8000), _peer("10.0.0.3", 443), _peer("10.0.0.4", 22, status="SYN_SENT")]})
    view = FieldView(proc)
    assert view["public_listen_ports"] == [8000]
    assert view["inbound_peer_hosts"] == 2  # the outbound 443 and 22 are not inbound
    assert view["peer_ports"] == 4
    assert view["connecting"] == 1


def test_operator_errors_on_the_new_fields_name_the_field():
    text = ("signatures:\n"
            "  - id: my-rule\n"
            "    category: proxy\n"
            "    severity: high\n"
            "    description: x\n"
            "    when: {exe_markers: {gte: 1}}\n"
            "    examples: {match: [{name: a}], no_match: [{name: b}]}\n")
    with pytest.raises(SignatureError) as err:
        parse_text(text, "mine.yaml")
    message = str(err.value)
    assert message.startswith("mine.yaml, line 6: signature 'my-rule'")
    assert "when.exe_markers.gte" in message and "not allowed on a text list field" in message


CONTENT_AND_BEHAVIOUR_FIELDS = ["exe_markers", "open_files", "library_paths", "public_listen_ports",
                                "inbound_peer_hosts", "peer_ports", "connecting",
                                # behaviour over a window (observe/behaviour.py)
                                "outbound_peers", "outbound_ports", "outbound_hosts",
                                "network_namespace", "cpu_demand_percent",
                                "cpu_demand_steady_percent", "pushed_connections",
                                "foreign_peers",
                                "kernel_slow_connections", "kernel_ports_tried",
                                "kernel_hosts_unanswered", "kernel_relayed_connections",
                                "kernel_refused_attempts", "imports", "listening_modules",
                                "served_ports"]


def test_the_content_and_behaviour_fields_exist_and_are_documented_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert set(CONTENT_AND_BEHAVIOUR_FIELDS) <= set(FIELDS)
    assert [n for n in CONTENT_AND_BEHAVIOUR_FIELDS if f"| `{n}` |" not in readme] == []

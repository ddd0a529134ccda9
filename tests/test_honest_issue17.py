"""Issue #17's ten honest workloads that were stopped, as real processes under a guarded server
with cell checks on. Four of them have tests elsewhere (tests/test_behaviour_network.py: the
200-client LLM benchmark, 120 users through one proxy, the API on port 6900;
tests/test_behaviour_mining.py: the CPU-bound loop asking a service on a pool port;
tests/test_redteam_evasions.py: the ``%%bash`` health check through /dev/tcp, and a detector
script listing Stratum names and citing hashcat.net). Here are the others, each
as a cell and, where people run it so, as a script."""

from __future__ import annotations

import pytest

from tests.standins.honest_fixtures import guard_config, run_to_the_end, service  # noqa: F401

pytestmark = pytest.mark.integration

CIC_IDS2018_LABELS = ["Benign", "Bot", "Brute Force -Web", "Brute Force -XSS",
                      "DDOS attack-HOIC", "DDOS attack-LOIC-UDP", "DDoS attacks-LOIC-HTTP",
                      "DoS attacks-GoldenEye", "DoS attacks-Hulk", "DoS attacks-SlowHTTPTest",
                      "DoS attacks-Slowloris", "FTP-BruteForce", "Infilteration",
                      "SQL Injection", "SSH-Bruteforce"]

#: An intrusion-detection model: a flow table with CSE-CIC-IDS2018's labels, softmax regression.
TRAIN_IDS = f'''
import csv, sys, time
import numpy as np
LABELS = {CIC_IDS2018_LABELS!r}
path, seconds = sys.argv[1], float(sys.argv[2])
rng = np.random.default_rng(0)
with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["Dst Port", "Flow Duration", "Tot Fwd Pkts", "Tot Bwd Pkts", "Label"])
    for i in range(3000):
        y = i % len(LABELS)
        w.writerow([80 + y, rng.exponential(1000 * (y + 1)), rng.poisson(y + 1), rng.poisson(2), LABELS[y]])
rows = list(csv.DictReader(open(path)))
X = np.array([[float(r[k]) for k in ("Dst Port", "Flow Duration", "Tot Fwd Pkts", "Tot Bwd Pkts")] for r in rows])
X = (X - X.mean(0)) / X.std(0)
y = np.array([LABELS.index(r["Label"]) for r in rows])
W = np.zeros((X.shape[1], len(LABELS)))
end, epochs = time.time() + seconds, 0
while time.time() < end:
    p = np.exp(X @ W); p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    W -= 0.1 * X.T @ p / len(y); epochs += 1
accuracy = float(((X @ W).argmax(1) == y).mean())
print("trained", epochs, "epochs; SlowHTTPTest recall", float(((X @ W).argmax(1) == y)[y == LABELS.index("DoS attacks-SlowHTTPTest")].mean()))
print("done", accuracy)
'''


async def test_an_ids_model_trained_on_cic_ids2018_labels_in_the_kernel_runs(
        kernel, guard_config, tmp_path):
    code = (f"import sys\nsys.argv = ['train', {str(tmp_path / 'flows.csv')!r}, '6']\n"
            + TRAIN_IDS)
    await run_to_the_end(kernel, guard_config, code)


async def test_an_ids_model_trained_on_cic_ids2018_labels_as_a_script_runs(
        kernel, guard_config, tmp_path):
    script = tmp_path / "train_ids.py"
    script.write_text(TRAIN_IDS)
    await run_to_the_end(kernel, guard_config,
                         f"!python {script} {tmp_path / 'flows.csv'} 6")


async def test_wget_mirroring_an_ftp_folder_one_level_deep_runs(kernel, guard_config, service,
                                                                 tmp_path):
    """``-l 1 -P downloads ftp://…``: wget's depth and folder, once taken for hydra's login
    and password list against an FTP server (cracking-hydra-options)."""
    pub = tmp_path / "ftp" / "pub"
    pub.mkdir(parents=True)
    for name in ("train.csv", "test.csv", "README"):
        (pub / name).write_text("x,y\n1,2\n" * 1000)
    port = service("ftp", tmp_path / "ftp")
    text = await run_to_the_end(
        kernel, guard_config,
        f"%cd {tmp_path}\n"
        f"!wget -q -r -l 1 -nH -P downloads ftp://127.0.0.1:{port}/pub/\n"
        f"!wget -q -r -l inf -np -nH -P mirror -t 3 -T 30 ftp://127.0.0.1:{port}/pub/\n"
        f"!curl -s -l -P - ftp://127.0.0.1:{port}/pub/\n"
        "!ls downloads/pub mirror/pub | sort -u | grep -c csv && echo done")
    assert "train.csv" in text and "2" in text.split(), text  # curl listed; wget fetched both


async def test_an_image_classifier_reading_t_rex_jpg_runs(kernel, guard_config, tmp_path):
    """``f"{DATA}/t-rex.jpg"`` was read as a miner's name assembled in disguise
    (cell-hidden-miner-name)."""
    data = tmp_path / "dinos"
    data.mkdir()
    species = ["t-rex", "raptor", "triceratops", "stegosaurus"]
    for i, name in enumerate(species):
        (data / f"{name}.jpg").write_bytes(bytes([i * 40]) * (32 * 32 * 3))
    cells = [
        f"DATA = {str(data)!r}\nimport numpy as np\n"
        "img = np.fromfile(f\"{DATA}/t-rex.jpg\", dtype=np.uint8).reshape(32, 32, 3)\n"
        "print(img.shape)",
        f"SPECIES = {species!r}\nW = np.random.default_rng(0).normal(size=(32 * 32 * 3, 4))\n"
        "for s in SPECIES:\n"
        "    x = np.fromfile(f'{DATA}/{s}.jpg', dtype=np.uint8).astype(float) / 255\n"
        "    print(f'{s}.jpg ->', SPECIES[int((x @ W).argmax())])",
        "!ls -la $DATA/t-rex.jpg && cp $DATA/t-rex.jpg /tmp/ && wc -c /tmp/t-rex.jpg; "
        "rm -f /tmp/t-rex.jpg\nprint('done')",
    ]
    for cell in cells:
        await run_to_the_end(kernel, guard_config, cell, done="")


DETECTOR = '''
# Cryptojacking detector for a security course. Patterns from the literature; hash modes from
# https://hashcat.net/wiki/doku.php?id=example_hashes for the cracking lab next week.
import hashlib, time
STRATUM_METHODS = [b"mining.subscribe", b"mining.authorize", b"mining.submit", b"mining.notify"]
def flagged(payload: bytes) -> bool:
    return any(m in payload for m in STRATUM_METHODS)
captured = [b'{"id": 1, "method": "mining.subscribe", "params": []}', b"GET / HTTP/1.1"] * 5000
end, n = time.time() + 4, 0
while time.time() < end:
    n += sum(map(flagged, captured))
print("flagged", n, hashlib.md5(b"password").hexdigest())
print("done")
'''


async def test_a_cryptojacking_detector_citing_hashcat_net_in_a_cell_runs(kernel, guard_config):
    """The Stratum method names as a detector's data and hashcat.net in a comment, in the
    kernel (the script form is in tests/test_redteam_evasions.py)."""
    await run_to_the_end(kernel, guard_config, DETECTOR)


async def test_a_cryptojacking_detector_posting_alerts_to_a_local_collector_runs(
        kernel, guard_config, service):
    """Stratum's method names as a detector's data (and a sample request among its captured
    payloads), a socket opened and an alert sent: no Stratum request is sent."""
    port = service("params")  # the course's collector: answers each line
    await run_to_the_end(kernel, guard_config, DETECTOR.replace(
        'print("done")',
        f'import socket\nc = socket.create_connection(("127.0.0.1", {port}))\n'
        'c.sendall(b"ALERT flagged=%d\\n" % n); c.recv(100)\nprint("done")'))


async def test_a_password_lab_script_citing_hashcat_net_in_a_comment_runs(
        kernel, guard_config, tmp_path):
    script = tmp_path / "strength.py"
    script.write_text(
        "# Which hashes are fast to crack? Speeds from https://hashcat.net/forum/ benchmarks.\n"
        "import hashlib, time\nend, n = time.time() + 4, 0\n"
        "while time.time() < end:\n    hashlib.sha256(b'correct horse %d' % n).digest(); n += 1\n"
        "print('hashed', n)\nprint('done')\n")
    await run_to_the_end(kernel, guard_config, f"!python {script}")

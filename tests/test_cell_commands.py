"""A cell's commands split into the programs they would start, checked by the process
signatures as programs not started yet; the kernel's memory of earlier cells; and the tricks an
abuser who has read the code would try (each one kept here once it was caught)."""

from __future__ import annotations

import pytest

from colab_guard.detect.cells import CellMemory, CellProcess, analyse_cell
from colab_guard.detect.commands import split_argv, split_shell
from colab_guard.detect.engine import STARTS_PREFIX, Engine, cell_findings, pending_process
from colab_guard.detect.fields import PendingView
from colab_guard.detect.signatures import load_signatures, parse_text
from colab_guard.observe.model import Snapshot

RULES = load_signatures()


def argvs(text, **kw):
    return [c.argv for c in split_shell(text, **kw)]


# ---------------------------------------------------------------- splitting

@pytest.mark.parametrize("text, expected", [
    ("cd roop && sudo nohup python run.py -s a.jpg > log 2>&1 &",
     [["sudo", "nohup", "python", "run.py", "-s", "a.jpg"], ["nohup", "python", "run.py", "-s", "a.jpg"],
      ["python", "run.py", "-s", "a.jpg"]]),
    ("A=b ./tool -x; ls | grep y || true",
     [["./tool", "-x"], ["ls"], ["grep", "y"], ["true"]]),
    ("timeout 10 env X=1 nice -n 5 ./t -a", [["timeout", "10", "env", "X=1", "nice", "-n", "5", "./t", "-a"],
                                             ["env", "X=1", "nice", "-n", "5", "./t", "-a"],
                                             ["nice", "-n", "5", "./t", "-a"], ["./t", "-a"]]),
    ("bash -c 'wget x && ./y'", [["bash", "-c", "wget x && ./y"], ["wget", "x"], ["./y"]]),
    ("exec ./y --flag", [["exec", "./y", "--flag"], ["./y", "--flag"]]),
    ("screen -dmS run ./y", [["screen", "-dmS", "run", "./y"], ["./y"]]),
    ("flock -w 5 /tmp/l ./y -a", [["flock", "-w", "5", "/tmp/l", "./y", "-a"], ["./y", "-a"]]),
    ("flock /tmp/l -c './y -a'", [["flock", "/tmp/l", "-c", "./y -a"], ["./y", "-a"]]),
    ("ls # ./y", [["ls"]]),
])
def test_shell_text_splits_into_the_programs_it_starts(text, expected):
    assert argvs(text) == expected


def test_cd_is_followed_within_one_shell_and_relative_to_the_folder_before():
    found = split_shell("cd /content/x && cd roop && python run.py", cwd=None)
    assert found[-1].cwd == "/content/x/roop"
    assert split_shell("python a.py", cwd="/w")[0].cwd == "/w"


def test_substitutions_run_and_plain_ones_are_replaced_by_their_output():
    assert ["./xmrig", "-o", "p:1"] in argvs("./$(echo eG1yaWc= | base64 -d) -o p:1")
    assert ["./xmrig"] in argvs("./`echo kzevt | tr a-z n-za-m`")
    assert ["./xmrig"] in argvs("T=$(echo girmx | rev); ./$T")
    assert ["curl", "-s", "http://x"] in argvs("echo $(curl -s http://x)")


def test_a_decoded_script_piped_into_a_shell_is_read():
    assert ["./xmrig", "-o", "pool:3333"] in argvs("echo Li94bXJpZyAtbyBwb29sOjMzMzM= | base64 -d | bash")


def test_splitting_is_bounded_and_survives_broken_quotes():
    assert len(split_shell("a; " * 10_000)) <= 200
    assert argvs("echo 'unterminated") in ([["echo"]], [])
    assert split_argv(["sudo", "-u", "me", "./y"])[-1].argv == ["./y"]


# ---------------------------------------------------------------- programs not started yet

def test_fields_of_a_program_not_started_are_its_command_line_only():
    view = PendingView(pending_process(split_shell("/opt/x/ngrok tcp 22")[0]))
    assert (view["name"], view["argv0"], view["exe_name"], view["exe"]) == ("ngrok", "ngrok", "ngrok", "/opt/x/ngrok")
    assert "sockets" in view.unknown and "cpu_percent" in view.unknown and "exe_markers" in view.unknown


RULE = """signatures:
  - id: site-tool
    category: proxy
    severity: high
    description: d
    when:
      all:
        - name: {equals: tool}
        - not: {sockets: {gte: 1}}
    examples: {match: [{name: tool}], no_match: [{name: other}]}
allow:
  - id: allow-course
    description: d
    when:
      all:
        - exe: {equals: /opt/course/tool}
        - cmdline: {contains: --course}
    examples: {match: [{exe: /opt/course/tool, cmdline: [tool, --course]}], no_match: [{exe: /tmp/tool, cmdline: [tool, --course]}]}
"""


def check(source, rules=RULES, engine=None, kernel="k"):
    engine = engine or Engine(rules)
    return engine.evaluate(Snapshot(kernel, 1.0, [CellProcess(pid=7, is_kernel=True, cell=source)]))


def test_a_condition_on_what_is_unknown_never_holds_even_under_not():
    rules = parse_text(RULE)
    assert check("!./tool --x", rules) == []  # not(sockets >= 1) is unknown before it starts


def test_an_allow_rule_that_may_hold_lets_the_cell_run_and_the_sampler_decide():
    rules = parse_text(RULE.replace("- not: {sockets: {gte: 1}}", "- args: {equals: --x}"))
    assert [d.signature.id for d in check("!./tool --x", rules)] == ["site-tool"]
    assert check("!./tool --x --course", rules) == []  # exe unknown: the allow rule may hold


def test_process_detections_name_the_program_and_the_findings_show_it():
    found = check("!sudo ngrok http 8888")
    assert {d.signature.id for d in found} == {"proxy-known-tool"}
    assert found[0].reasons[0] == STARTS_PREFIX + "ngrok http 8888"
    assert cell_findings(found, "") == [STARTS_PREFIX + "ngrok http 8888"]


def test_process_signatures_can_carry_cell_examples_and_signatures_check_runs_them(tmp_path, capsys):
    from colab_guard.cli.signatures import check_files

    path = tmp_path / "site.yaml"
    path.write_text(RULE.replace("- not: {sockets: {gte: 1}}", "- args: {regex: '^-'}").replace(
        "examples: {match: [{name: tool}], no_match: [{name: other}]}",
                                 "examples: {match: [{cell: '!sudo ./tool -v'}], no_match: [{cell: \"print('./tool -v')\"}]}"))

    class Args:
        files = [str(path)]
    assert check_files(Args) == 0, capsys.readouterr().out
    path.write_text(path.read_text().replace("print('./tool -v')", "!./tool -v"))
    assert check_files(Args) == 1
    assert "examples.no_match[0] matched" in capsys.readouterr().out


# ---------------------------------------------------------------- memory of earlier cells

def test_a_tool_renamed_from_python_is_known_and_the_evidence_says_so():
    found = check_all(["import shutil\nshutil.move('xmrig', 'kworker')",
                       "import subprocess\nsubprocess.run(['./kworker', '-o', 'pool:3333'])"])
    assert found[0] == []
    assert found[1][0].reasons[0] == STARTS_PREFIX + "./kworker -o pool:3333, renamed from xmrig"


def test_earlier_cells_are_remembered_per_kernel():
    engine = Engine(RULES)
    assert check("import subprocess as sp\nname = 'xm' + 'ri'", engine=engine) == []
    assert check("name += 'g'", engine=engine) != []  # hidden miner name
    assert check("sp.run([name, '-o', 'pool:3333'])", engine=engine)
    assert check("sp.run([name, '-o', 'pool:3333'])", engine=engine, kernel="other") == []


def test_a_repeated_check_of_the_same_cell_is_not_a_second_run():
    memory = CellMemory()
    memory.analyse("%cd roop")
    memory.analyse("%cd roop")
    assert memory.cwd == "roop"


def test_memory_is_bounded():
    memory = CellMemory()
    for i in range(5):
        memory.analyse("\n".join(f"v{i}_{j} = 'x'" for j in range(300)))
    assert len(memory.names) <= 512
    engine = Engine(RULES)
    for i in range(1100):
        engine.cell_memory(f"k{i}")
    assert len(engine._cells) <= 1024


def test_a_cloned_folder_moved_elsewhere_is_still_its_repository():
    memory = CellMemory()
    memory.analyse("!git clone https://github.com/s0md3v/roop.git && mv roop tool")
    memory.analyse("%cd tool")
    assert memory.analyse("import runpy\nrunpy.run_path('run.py')").commands[-1].argv[1] == "roop/run.py"
    found = check_all(["!git clone https://github.com/s0md3v/roop.git && mv roop tool", "%cd tool",
                       "!python run.py --execution-provider cuda"])
    assert "deepfake-known-tool" in {d.signature.id for d in found[-1]}


def check_all(cells):
    engine = Engine(RULES)
    return [check(c, engine=engine) for c in cells]


def test_a_clone_under_another_name_is_known_by_its_repository():
    memory = CellMemory()
    memory.analyse("!git clone https://bit.ly/3xYz swap")  # the shortener hides the name
    memory.analyse("!git clone https://github.com/s0md3v/roop myswap")
    memory.analyse("%cd myswap")
    commands = memory.analyse("!python run.py --execution-provider cuda").commands
    assert commands[-1].argv[1] == "roop/run.py"


# ---------------------------------------------------------------- an abuser who knows the code

REFUSED = [
    ("quoting", "!'x'm\"r\"ig -o pool:3333"),
    ("shell variables", "!A=xm; B=rig; ./$A$B -o pool:3333"),
    ("IPython variable", "tool = 'xm' 'rig'\n!./{tool} -o pool:3333"),
    ("command substitution", "!./$(echo xmrig) --donate-level 1"),
    ("base64 into bash", "!echo Li94bXJpZyAtbyBwb29sOjMzMzM= | base64 -d | bash"),
    ("rot13 exec", "import codecs\nexec(codecs.decode(\"vzcbeg bf; bf.flfgrz('./kzevt -b cbby:3333')\", 'rot13'))"),
    ("reversed", "import os\nos.system('3333:loop o- girmx/.'[::-1])"),
    ("format", "import os\nos.system('./{}{} -o {}'.format('xm', 'rig', 'pool:3333'))"),
    ("percent", "import os\nos.system('nohup ./%s &' % 'xmrig')"),
    ("getattr", "import os\ngetattr(os, 'sys' + 'tem')('ngrok http 80')"),
    ("__import__", "__import__('os').system('cloudflared tunnel --url http://localhost:8888')"),
    ("function alias", "import os\nrun = os.system\nrun('ngrok tcp 22')"),
    ("helper function", "import subprocess\ndef sh(cmd):\n    return subprocess.run(cmd, shell=True)\nsh('ngrok tcp 22')"),
    ("IPython alias", "ip = get_ipython()\nip.system('ngrok tcp 22')"),
    ("get_ipython imported under another name", "from IPython import get_ipython as g\ng().system('ngrok tcp 22')"),
    ("system_raw", "get_ipython().system_raw('./ngrok tcp 22 &')"),
    ("python -c", "!python3 -c \"import os; os.system('./xmrig -o pool:3333')\""),
    ("bash -c in Popen", "import subprocess\nsubprocess.Popen(['bash', '-c', 'cd /tmp && ./t-rex -a kawpow -o stratum+tcp://p:1'])"),
    ("f-string with unknowns", "import subprocess\nport = input()\nsubprocess.Popen(f'cloudflared tunnel --url http://localhost:{port}', shell=True)"),
    ("%%bash with cd", "%%bash\ncd /tmp/x\nexport T=./lolMiner\n$T --algo ETHASH --pool p:3333"),
    ("%%capture", "%%capture\n!ngrok http 8888"),
    ("timeout wrapper", "!timeout 1h ./xmrig -o pool:3333"),
    ("flock's command", "!flock /tmp/run.lock -c './xmrig -o pool:3333'"),
    ("ssh -R to a relay", "!ssh -o StrictHostKeyChecking=no -R 80:localhost:7860 serveo.net"),
    ("localtunnel", "!npm install -g localtunnel && lt --port 8501"),
    ("renamed after download", "!mv xmrig kworker\n!./kworker -o pool:3333"),
    ("%%writefile then run", "%%writefile go.sh\n./xmrig -o pool:3333\n"),
    ("deepfake in a renamed folder", "!python main.py extract --input-dir a --output-dir b --detector s3fd"),
    ("roop options", "!cd swap && python run.py -s face.png -t clip.mp4 -o out.mp4"),
    ("swap model download", "!wget -q https://huggingface.co/x/y/resolve/main/inswapper_128.onnx"),
    ("miner release", "!curl -sL https://github.com/xmrig/xmrig/releases/download/v6.21.0/xmrig-6.21.0-linux-static-x64.tar.gz | tar xz"),
    ("libtorrent split across cells", "import libtorrent as lt\nses = lt.session()\nses.listen_on(6881, 6891)"),
    ("pyngrok", "from pyngrok import ngrok as n\nn.connect(7860)"),
    ("printf escapes", "!\"$(printf '\\x78mrig')\" -o pool:3333"),
    ("eval of a decoded line", "!eval \"$(echo bmdyb2sgdGNwIDIy | base64 -d)\""),
    ("str.split", "import subprocess\ncmd = 'ngrok tcp 22'\nsubprocess.run(cmd.split())"),
    ("star import", "from subprocess import *\nrun(['ngrok', 'tcp', '22'])"),
    ("%run of a face-swap script", "%cd /content/roop\n%run run.py --execution-provider cuda"),
    ("runpy", "import os, runpy\nos.chdir('/content/facefusion')\nrunpy.run_path('run.py')"),
    ("awk system()", "!awk 'BEGIN{system(\"ngrok tcp 22\")}'"),
    ("perl -e", "!perl -e 'system(\"./xmrig -o pool:3333\")'"),
    ("node -e", "!node -e \"require('child_process').execSync('cloudflared tunnel --url localhost:8888')\""),
    ("find -exec", "!find /tmp -name 'x*' -exec ngrok tcp 22 \\;"),
    ("libtorrent through __import__", "lt = __import__('libtorrent')\ns = lt.session()\ns.listen_on(6881, 6891)"),
    ("os.execl", "import os\nos.execl('/bin/sh', 'sh', '-c', 'ngrok tcp 22')"),
    ("download from python", "import wget\nwget.download('https://github.com/trexminer/T-Rex/releases/download/0.26.8/t-rex-0.26.8-linux.tar.gz')"),
    ("release file name", "!./cloudflared-linux-amd64 tunnel --url http://localhost:8888"),
    ("stratum in python", "import socket, json\ns = socket.socket()\ns.connect(('p', 3333))\ns.send(json.dumps({'method': 'mining.' + 'subscribe'}).encode())"),
    # session 21, from the notebook corpus: a command built from a template with parts only
    # known when it runs, kept in a variable before the call that runs it
    ("%-template in a variable", "import subprocess, uuid\nsub = uuid.uuid4().hex\ncmd = 'python3 -m jprq %s -s=%s' % (8000, sub)\nsubprocess.Popen(cmd, shell=True)"),
    ("f-string in a variable", "import os\nport = input()\ncmd = f'cloudflared tunnel --url http://localhost:{port}'\nos.system(cmd)"),
    (".format template in a variable", "import os\nc = 'ngrok {} {}'.format(proto, port)\nos.system(c)"),
    ("pinggy SDK", "import pinggy\nt = pinggy.start_tunnel(forwardto='localhost:11434')"),
    ("CryptoNote pool in python", "import socket, json\ns = socket.socket()\ns.connect((host, 4242))\ns.sendall(json.dumps({'method': 'login', 'params': {'login': w, 'pass': 'x'}}).encode())\ns.sendall(json.dumps({'method': 'submit', 'params': {'job_id': j, 'nonce': n, 'result': r}}).encode())"),
]


@pytest.mark.parametrize("what, cell", REFUSED, ids=[r[0] for r in REFUSED])
def test_tricks_are_refused(what, cell):
    engine = Engine(RULES)
    if what == "%%writefile then run":
        check(cell, engine=engine)
        cell = "!bash go.sh"
    if what == "renamed after download":
        first, cell = cell.split("\n")
        check(first, engine=engine)
    found = check(cell, engine=engine)
    actions = {d.signature.action or "category" for d in found}
    assert found and actions != {"warn"} and actions != {"record"}, [d.signature.id for d in found]


NEAR_MISSES = [
    ("a miner named in a comment and a string", "# !./xmrig -o pool:3333\nprint('./xmrig -o pool:3333')"),
    ("echo of a command", "!echo ngrok http 8888"),
    ("echo of a torrent client's name", "!echo webtorrent is not allowed here"),
    ("killing a tunnel", "!pkill ngrok; killall cloudflared"),
    ("awk on a log", "!awk '{print $1}' access.log | sort | uniq -c"),
    ("grep for a tool", "!grep -rn cloudflared /etc/"),
    ("ssh client", "!ssh -i key.pem me@example.org uptime"),
    ("ssh -L to a database", "!ssh -N -L 5432:db:5432 me@bastion &"),
    ("pip install ordinary ML", "!pip install -q torch torchvision transformers gradio"),
    ("clone and install an ML repo", "!git clone https://github.com/ultralytics/yolov5\n%cd yolov5\n%pip install -qr requirements.txt\n!python detect.py --weights yolov5s.pt --source data/images"),
    ("tensorboard", "%load_ext tensorboard\n%tensorboard --logdir runs --bind_all"),
    ("streamlit", "!streamlit run app.py --server.port 8501 &"),
    ("dask local cluster", "from dask.distributed import Client, LocalCluster\nclient = Client(LocalCluster(n_workers=4))"),
    ("ray local", "import ray\nray.init(num_cpus=4)"),
    ("pm4py miners", "import pm4py\nnet, im, fm = pm4py.discover_petri_net_inductive(log)\nheu = pm4py.discover_heuristics_net(log)"),
    ("password hashing", "import bcrypt, hashlib\nh = bcrypt.hashpw(b'pw', bcrypt.gensalt())\nprint(hashlib.sha256(b'rockyou').hexdigest())"),
    ("face recognition", "!pip install face_recognition\nimport face_recognition\nenc = face_recognition.face_encodings(img)"),
    ("socket on localhost", "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 9999))\ns.listen()"),
    ("load test of one's own server", "!ab -n 1000 -c 10 http://127.0.0.1:8000/"),
    ("python run.py with numbers", "!python run.py -s 42 -t 0.7"),
    ("a file named like a tool", "!cat xmrig.json && ls ngrok-logs/"),
    ("a URL path with a tool's name", "!wget https://example.org/blog/why-xmrig-is-banned.html"),
    ("apt install ssh client", "!apt-get install -y openssh-client"),
    ("downloading a dataset from python", "import urllib.request\nurllib.request.urlretrieve('https://example.org/data/xmrig-logs.csv', 'logs.csv')"),
    ("crypto prices", "import yfinance as yf\nbtc = yf.download('BTC-USD')\nbtc['Close'].plot()"),
    # session 21: a template in a variable keeps its known words only (a training run, a
    # percent sign); a tunnel's name in the template's text that is printed runs nothing
    ("a training command from a template", "import os\ncmd = 'python train.py --lr %s --epochs {}' % lr\nos.system(cmd)"),
    ("a template printed, not run", "cmd = 'python3 -m jprq %s' % port\nprint('we do not run', cmd)"),
    ("a parameter named like a template", "import os\ncmd = f'ngrok http {port}'\ndef run(cmd):\n    os.system(cmd)"),
    ("a template rebound before it runs", "import os\ncmd = f'ngrok http {port}'\ncmd = 'ls -la'\nos.system(cmd)"),
    ("a pool protocol lesson", "doc = {'method': 'login', 'params': {'login': 'wallet', 'pass': 'x'}}\nshare = {'method': 'submit', 'params': {'job_id': 1, 'nonce': 2}}\nprint(doc, share)"),
]


@pytest.mark.parametrize("what, cell", NEAR_MISSES, ids=[n[0] for n in NEAR_MISSES])
def test_honest_cells_are_not_touched(what, cell):
    assert [(d.signature.id, d.reasons[:1]) for d in check(cell)] == []


def test_the_cell_text_keeps_its_lines_for_the_cell_signatures():
    text = analyse_cell("import libtorrent as lt\nclass S(paramiko.ServerInterface): pass\nlt.session()").text
    assert "call: libtorrent.session" in text.splitlines()
    assert "base: paramiko.ServerInterface" in text.splitlines()


# ---------------------------------------------------------------- bounded work

def test_many_escaped_lines_are_converted_without_ipythons_quadratic_pass():
    from colab_guard.detect import cells

    lines = [f"!./tool{i} --opt {i}" for i in range(cells.MAX_IPYTHON_ESCAPES + 1)]
    lines[7] = "    %cd /tmp"
    fast = cells._fast_escapes("\n".join(lines))
    assert fast is not None and "get_ipython().system('./tool0 --opt 0')" in fast
    assert "    get_ipython().run_line_magic('cd', '/tmp')" in fast
    assert cells._fast_escapes("!ls\n" * 3) is None  # few: IPython's own transforms
    lines[7] = "%cd /tmp"
    text = analyse_cell("\n".join(lines[:8] + ["!./ngrok http 80"] + lines[8:])).text
    assert "run: ./ngrok http 80" in text.splitlines()


def test_a_cell_that_starts_thousands_of_programs_is_checked_on_a_bounded_number():
    from colab_guard.detect import engine as engine_module

    padding = "\n".join(f"!./tool{i} --opt {i}" for i in range(engine_module.MAX_PROGRAMS_CHECKED + 50))
    assert check(padding) == []
    assert check("!ngrok http 80\n" + padding)  # within the bound: checked

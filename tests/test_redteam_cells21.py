"""Red team, session 21: the day's new cell rules (the CryptoNote Stratum dialect of
``cell-stratum-client``, pinggy's SDK, remocolab forks, jprq, and a command's known words
kept from a ``%`` or ``.format`` template) attacked by one who read them, and the honest
cells near them.

Closed, each a general rule (detect/cells.py unless said):
- the CryptoNote branch of ``cell-stratum-client`` (cells-python.yaml) takes each of its six
  names spelled, assembled (``hidden:``: ``"job" + "_id"``, ``"".join``, a reversed or
  class-attribute name) or quoted in a JSON text whose other parts are only known when it
  runs; ``dict(method="login")`` gives its keys as ``{"method": …}`` does; a ``+`` sum's runs
  of known texts are read as the one text Python joins (``(b'{"job_' + b'id": "' + j) + b'",
  "non' + b'ce"'`` left ``b'", "non'`` and ``b'ce"'`` apart; ``_visit_added``); a named
  lambda's call with constant arguments folds as a def's does (``d("bWV0aG9k")``);
- a template is read wherever it is (a list's or dict's item, a variable, a class attribute,
  a loop's variable, a nested template: it was only a string literal), its fields filled by
  the values the cell spells (``"%s tcp %d" % ("ngrok", port)``, ``%(k)s`` of a dict,
  ``{}``/``{0}``/``{k}`` of ``.format``, ``.format_map``, ``string.Template(…)
  .substitute``, also of a name bound to one, ``.replace``, ``str.format(t, …)``,
  ``operator.mod``, ``t.__mod__``); a helper (``def`` returning one expression, a lambda)
  given an argument only known when it runs is read with its parameters bound to what the
  caller passes (``_loose_returned``); a name bound to such a command is copied, unpacked
  (``c, n = "ngrok %s" % p, 1``), a walrus, ``str()``/``.strip()``/``.split()``/``sep.join``
  of it, a list holding one; a ``while`` loop that re-binds it to another such command is
  any of them (``visit_While``);
- ``pinggy.Tunnel`` (pinggy's lower-level API: configured, then started) is a tunnel as
  ``pinggy.start_tunnel`` is (cells-python.yaml).
Bounded: one reading of a command with unknown parts takes at most MAX_LOOSE_STEPS steps and
reads at most MAX_LOOSE_INLINED helpers' calls (one whose arguments are all known is not
read again: its fold failed for another reason); a ``+`` sum is read once, not once per part
sum.
Left (strict xfail, the exact reason): what none of these rules reads."""

from __future__ import annotations


import pytest

from tests.test_redteam_cells13 import FORBIDDEN, stand_in_path  # noqa: F401  (a fixture)
from tests.test_redteam_cells16 import _runs_ngrok
from tests.test_redteam_evasions import _cell_signatures

STRATUM = "cell-stratum-client"
HEAD = "import subprocess, os, operator, functools, string\nport = int(os.environ.get('PORT', '22'))\n"
RUN = "subprocess.run(cmd, shell=True)"
SOCKET = "import socket, json\ns = socket.socket()\ns.connect((pool, 4242))\n"
LOGIN = "s.sendall(json.dumps({'method': 'login', 'params': {'login': wallet, 'pass': 'x'}}).encode())\n"

#: A Monero (CryptoNote) pool's login and share, their names built so that no plain
#: ``text:`` line holds one: each was missed.
MINERS = [
    ("a key built from its codes", SOCKET + "k = ''.join(chr(c) for c in [106, 111, 98, 95, 105, 100])\n"
     + LOGIN + "s.sendall(json.dumps({'method': 'submit', 'params': {k: j, 'nonce': n}}).encode())"),
    ("keys concatenated", SOCKET + "s.sendall(json.dumps({'me' + 'thod': 'lo' + 'gin', 'params': "
     "{'lo' + 'gin': wallet, 'pa' + 'ss': 'x'}}).encode())\ns.sendall(json.dumps({'me' + 'thod': "
     "'sub' + 'mit', 'params': {'job' + '_id': j, 'non' + 'ce': n}}).encode())"),
    ("keys of class attributes", SOCKET + "class P:\n    M = 'meth' + 'od'\n    L = 'lo' + 'gin'\n"
     "    W = 'pa' + 'ss'\n    S = 'sub' + 'mit'\n    J = 'job' + '_id'\n    N = 'non' + 'ce'\n"
     "s.sendall(json.dumps({P.M: P.L, 'params': {P.L: wallet, P.W: 'x'}}).encode())\n"
     "s.sendall(json.dumps({P.M: P.S, 'params': {P.J: j, P.N: n}}).encode())"),
    ("keys joined", SOCKET + "s.sendall(json.dumps({''.join(['me', 'thod']): ''.join(['lo', 'gin']), "
     "'params': {''.join(['lo', 'gin']): wallet, ''.join(['pa', 'ss']): 'x'}}).encode())\n"
     "s.sendall(json.dumps({''.join(['me', 'thod']): ''.join(['sub', 'mit']), 'params': "
     "{'_'.join(['job', 'id']): j, ''.join(['no', 'nce']): n}}).encode())"),
    ("keys reversed", SOCKET + "s.sendall(json.dumps({'dohtem'[::-1]: 'nigol'[::-1], 'params': "
     "{'nigol'[::-1]: wallet, 'ssap'[::-1]: 'x'}}).encode())\ns.sendall(json.dumps({'dohtem'[::-1]: "
     "'timbus'[::-1], 'params': {'di_boj'[::-1]: j, 'ecnon'[::-1]: n}}).encode())"),
    ("keys decoded by a lambda", SOCKET + "import base64\nd = lambda x: base64.b64decode(x).decode()\n"
     "s.sendall(json.dumps({d('bWV0aG9k'): d('bG9naW4='), 'params': {d('bG9naW4='): wallet, "
     "d('cGFzcw=='): 'x'}}).encode())\ns.sendall(json.dumps({d('bWV0aG9k'): d('c3VibWl0'), "
     "'params': {d('am9iX2lk'): j, d('bm9uY2U='): n}}).encode())"),
    ("dict() keywords", SOCKET + "s.sendall(json.dumps(dict(method='login', params={'login': wallet, "
     "'pass': 'x'})).encode())\ns.sendall(json.dumps(dict(method='submit', params=dict(job_id=j, "
     "nonce=n, result=h))).encode())"),
    ("bytes around the wallet", "import socket\ns = socket.create_connection((pool, 3333))\n"
     "s.sendall(b'{\"method\": \"login\", \"params\": {\"login\": \"' + w + b'\", \"pass\": \"x\"}}\\n')\n"
     "s.sendall(b'{\"method\": \"submit\", \"params\": {\"job_id\": \"' + j + b'\", \"nonce\": \"' + n"
     " + b'\"}}\\n')"),
    ("bytes split past an unknown part", "import socket\ns = socket.create_connection((pool, 3333))\n"
     "s.sendall(b'{\"meth' + b'od\": \"log' + b'in\", \"params\": {\"lo' + b'gin\": \"' + w + "
     "b'\", \"pa' + b'ss\": \"x\"}}\\n')\ns.sendall(b'{\"meth' + b'od\": \"sub' + b'mit\", \"params\": "
     "{\"job' + b'_id\": \"' + j + b'\", \"non' + b'ce\": \"' + n + b'\"}}\\n')"),
]

#: Caught before this session, kept caught.
MINERS_CAUGHT = [
    ("keys of another spelling lowered", SOCKET + "K = {'M': 'METHOD', 'L': 'LOGIN', 'P': 'PASS', "
     "'S': 'SUBMIT', 'J': 'JOB_ID', 'N': 'NONCE'}\nk = {a: b.lower() for a, b in K.items()}\n"
     "s.sendall(json.dumps({k['M']: k['L'], 'params': {k['L']: wallet, k['P']: 'x'}}).encode())\n"
     "s.sendall(json.dumps({k['M']: k['S'], 'params': {k['J']: j, k['N']: n}}).encode())"),
    ("a % template of the JSON", SOCKET + "s.sendall(('{\"method\": \"login\", \"params\": {\"login\": "
     "\"%s\", \"pass\": \"x\"}}' % w).encode())\ns.sendall(('{\"method\": \"submit\", \"params\": "
     "{\"job_id\": \"%s\", \"nonce\": \"%s\"}}' % (j, n)).encode())"),
]

#: A tunnel command built from a template the rule did not read: each was missed, and each
#: really starts ngrok (the stand-in records ``tcp 22``).
TEMPLATES = [
    ("a template in a list", HEAD + "T = ['ngrok tcp %d']\ncmd = T[0] % port\n" + RUN),
    ("a template in a dict", HEAD + "T = {'t': 'ngrok tcp %d'}\ncmd = T['t'] % port\n" + RUN),
    ("a template in a variable, %", HEAD + "t = 'ngrok tcp %d'\ncmd = t % port\n" + RUN),
    ("a template in a variable, .format", HEAD + "t = 'ngrok tcp {}'\ncmd = t.format(port)\n" + RUN),
    ("a template in a class attribute", HEAD + "class C:\n    T = 'ngrok tcp %d'\ncmd = C.T % port\n" + RUN),
    ("a template filled by a def", HEAD + "def mk(t, p):\n    return t % p\ncmd = mk('ngrok tcp %d', port)\n" + RUN),
    ("a def's template run at once", HEAD + "def mk(p):\n    return 'ngrok tcp %d' % p\n"
     "subprocess.run(mk(port), shell=True)"),
    ("a def's template as a default", HEAD + "def mk(p, t='ngrok tcp %d'):\n    return t % p\n"
     "cmd = mk(port)\n" + RUN),
    ("a lambda's template", HEAD + "mk = lambda p: 'ngrok tcp %d' % p\ncmd = mk(port)\n" + RUN),
    ("a lambda called where written", HEAD + "cmd = (lambda p: 'ngrok tcp %d' % p)(port)\n" + RUN),
    ("the tool a % tuple's item", HEAD + "cmd = '%s tcp %d' % ('ngrok', port)\n" + RUN),
    ("the tool a % dict's item", HEAD + "cmd = '%(t)s tcp %(p)d' % {'t': 'ngrok', 'p': port}\n" + RUN),
    ("the tool a .format argument", HEAD + "cmd = '{} tcp {}'.format('ngrok', port)\n" + RUN),
    ("the tool a .format keyword", HEAD + "cmd = '{t} tcp {p}'.format(t='ngrok', p=port)\n" + RUN),
    (".format_map", HEAD + "cmd = 'ngrok tcp {p}'.format_map({'p': port})\n" + RUN),
    (".format_map naming the tool", HEAD + "cmd = '{t} tcp {p}'.format_map({'t': 'ngrok', 'p': port})\n" + RUN),
    (".format_map of a name", HEAD + "d = {'p': port}\ncmd = 'ngrok tcp {p}'.format_map(d)\n" + RUN),
    ("string.Template", HEAD + "cmd = string.Template('ngrok tcp $p').substitute(p=port)\n" + RUN),
    ("string.Template naming the tool", HEAD + "cmd = string.Template('${t} tcp $p').substitute(t='ngrok', p=port)\n" + RUN),
    ("Template.safe_substitute", HEAD + "from string import Template\n"
     "cmd = Template('ngrok tcp $p').safe_substitute(p=port)\n" + RUN),
    ("a Template kept in a name", HEAD + "t = string.Template('ngrok tcp $p')\ncmd = t.substitute(p=port)\n" + RUN),
    ("str.replace on a template", HEAD + "cmd = 'ngrok tcp PORT'.replace('PORT', str(port))\n" + RUN),
    ("str.replace of a variable", HEAD + "t = 'ngrok tcp PORT'\ncmd = t.replace('PORT', str(port))\n" + RUN),
    ("str.replace naming the tool", HEAD + "cmd = 'TOOL tcp %d'.replace('TOOL', 'ngrok') % port\n" + RUN),
    ("str.format unbound", HEAD + "cmd = str.format('ngrok tcp {}', port)\n" + RUN),
    ("operator.mod", HEAD + "cmd = operator.mod('ngrok tcp %d', port)\n" + RUN),
    ("__mod__", HEAD + "cmd = 'ngrok tcp %d'.__mod__(port)\n" + RUN),
    ("a nested template", HEAD + "cmd = ('%s tcp %%d' % 'ngrok') % port\n" + RUN),
    ("a loop's templates", HEAD + "for t in ['echo %d', 'ngrok tcp %d']:\n    cmd = t % port\n    " + RUN),
    ("a template re-bound in a while", HEAD + "cmd = 'echo %d' % port\nn = 0\nwhile n < 2:\n"
     "    subprocess.run(cmd, shell=True)\n    cmd = 'ngrok tcp %d' % port\n    n += 1"),
    ("a name of a name", HEAD + "c = 'ngrok tcp %d' % port\ncmd = c\n" + RUN),
    ("a sum of two", HEAD + "a = 'ngrok %s' % 'tcp'\ncmd = a + ' %d' % port\n" + RUN),
    ("unpacked", HEAD + "cmd, n = 'ngrok tcp %d' % port, 1\n" + RUN),
    ("a walrus", HEAD + "subprocess.run((cmd := 'ngrok tcp %d' % port), shell=True)"),
    ("split into a list", HEAD + "c = 'ngrok tcp %d' % port\nsubprocess.run(c.split())"),
    ("stripped", HEAD + "cmd = (' ngrok tcp %d ' % port).strip()\n" + RUN),
    ("str() of an f-string", HEAD + "cmd = str(f'ngrok tcp {port}')\n" + RUN),
    ("joined words", HEAD + "cmd = ' '.join(['ngrok', 'tcp', str(port)])\n" + RUN),
    ("a list of words joined", HEAD + "parts = ['ngrok', 'tcp', str(port)]\ncmd = ' '.join(parts)\n" + RUN),
]

#: jprq as the new rules name it, through the same templates.
JPRQ = [
    ("jprq in a list's template", "import subprocess, sys\nT = ['python3 -m jprq %s -s=%s']\n"
     "subprocess.Popen(T[0] % (port, name), shell=True)"),
    ("jprq by a lambda", "import subprocess\nmk = lambda p: '{} -m jprq {}'.format('python3', p)\n"
     "subprocess.Popen(mk(port), shell=True)"),
    ("jprq by a Template", "import subprocess, string\n"
     "c = string.Template('python3 -m $m $p').substitute(m='jprq', p=port)\nsubprocess.Popen(c, shell=True)"),
]

#: pinggy, remocolab under other names: caught already (an alias, importlib) or now (Tunnel).
MODULES = [
    ("pinggy.Tunnel", "cell-python-tunnel", "import pinggy as pg\nt = pg.Tunnel(server_address='a.pinggy.io:443')\n"
     "t.add_forwarding('localhost:8080')\nt.start()"),
    ("pinggy under an alias", "cell-python-tunnel", "import pinggy as pg\nt = pg.start_tunnel(forwardto='localhost:8000')"),
    ("from pinggy import start_tunnel as st", "cell-python-tunnel",
     "from pinggy import start_tunnel as st\nt = st(forwardto='localhost:8000')"),
    ("pinggy by importlib", "cell-python-tunnel", "import importlib\npg = importlib.import_module('ping' + 'gy')\n"
     "t = pg.start_tunnel(forwardto='localhost:8000')"),
    ("pinggy by __import__", "cell-python-tunnel", "pg = __import__('pinggy')\npg.start_tunnel(forwardto=8000)"),
    ("remocolab under an alias", "cell-python-remote-access", "import remocolab as r\nr.setup()"),
    ("from remocolab import setup as s", "cell-python-remote-access", "from remocolab import setup as s\ns()"),
    ("remocolab by importlib", "cell-python-remote-access",
     "import importlib\nr = importlib.import_module('remocolab')\nr.setup()"),
    ("jprq by runpy", FORBIDDEN, "import runpy, sys\nsys.argv = ['jprq', '8000']\nrunpy.run_module('jprq', run_name='__main__')"),
    ("jprq -m in a list", FORBIDDEN, "import subprocess, sys\nsubprocess.Popen([sys.executable, '-m', 'jprq', '8000'])"),
]


@pytest.mark.parametrize("what, cell", MINERS + MINERS_CAUGHT, ids=[m[0] for m in MINERS + MINERS_CAUGHT])
def test_a_cryptonote_miner_with_its_names_built_is_refused(what, cell):
    assert STRATUM in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", TEMPLATES, ids=[t[0] for t in TEMPLATES])
def test_a_tunnel_built_from_a_template_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, cell", TEMPLATES, ids=[t[0] for t in TEMPLATES])
def test_each_template_evasion_really_starts_ngrok(what, cell, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(cell, stand_in_path, tmp_path, what)


@pytest.mark.parametrize("what, cell", JPRQ, ids=[j[0] for j in JPRQ])
def test_jprq_built_from_a_template_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, signature, cell", MODULES, ids=[m[0] for m in MODULES])
def test_a_tunnel_or_remote_desktop_module_under_another_name_is_refused(what, signature, cell):
    assert signature in _cell_signatures(cell), what


#: Still missed, each for the reason given.
LEFT = [
    ("a template's bound method kept", HEAD + "mk = 'ngrok tcp {}'.format\ncmd = mk(port)\n" + RUN,
     "a bound method kept in a name is no template the reader follows (only a call on the text)"),
    ("a partial of a template's method", HEAD + "mk = functools.partial('ngrok tcp {}'.format)\n"
     "cmd = mk(port)\n" + RUN, "the same: a partial of .format is not read as the template"),
    ("a method returning the template", HEAD + "class C:\n    def mk(self, p):\n"
     "        return 'ngrok tcp %d' % p\ncmd = C().mk(port)\n" + RUN,
     "only the cell's functions and lambdas called by name are read through, not methods"),
    ("a staticmethod returning the template", HEAD + "class C:\n    @staticmethod\n    def mk(p):\n"
     "        return 'ngrok tcp %d' % p\ncmd = C.mk(port)\n" + RUN,
     "the same: a method called through its class is not read through"),
    ("a helper of two statements", HEAD + "def mk(p):\n    t = 'ngrok tcp %d'\n    return t % p\n"
     "cmd = mk(port)\n" + RUN, "only a helper that returns one expression is read through"),
    ("a generator joined", HEAD + "cmd = ' '.join(w for w in ['ngrok', 'tcp', str(port)])\n" + RUN,
     "a generator expression is no list of words to join (only a list or a name bound to one)"),
    ("a template from dict.get", HEAD + "T = {'t': 'ngrok tcp %d'}\ncmd = T.get('t') % port\n" + RUN,
     "dict.get of a constant table does not fold (an item by subscript does)"),
]


@pytest.mark.parametrize("what, cell, reason", LEFT, ids=[c[0] for c in LEFT])
def test_each_left_evasion_really_starts_ngrok(what, cell, reason, stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(cell, stand_in_path, tmp_path, what)


@pytest.mark.parametrize("what, cell", [
    pytest.param(what, cell, marks=pytest.mark.xfail(strict=True, reason=reason))
    for what, cell, reason in LEFT], ids=[c[0] for c in LEFT])
def test_a_left_evasion_is_refused(what, cell):
    assert FORBIDDEN in _cell_signatures(cell), what


@pytest.mark.parametrize("what, signature, cell", [
    pytest.param(what, signature, cell, marks=pytest.mark.xfail(strict=True, reason=reason))
    for what, signature, cell, reason in [
        ("a remocolab fork under another module name", "cell-python-remote-access",
         "import colab_desktop\ncolab_desktop.setup()",
         "setup() of a package is honest (setuptools, a project's own); a fork renamed is known "
         "only where it is installed from a repository named remocolab"),
        ("jprq copied by a command substitution", FORBIDDEN, "!cp $(which jprq) /tmp/x && /tmp/x 8000",
         "what $(which jprq) prints is only known when the shell runs it"),
    ]])
def test_a_left_module_evasion_is_refused(what, signature, cell):
    assert signature in _cell_signatures(cell), what


#: Honest cells near the new rules: none is refused or warned about.
HONEST = [
    ("a job queue API client with a job id and a nonce",
     "import requests, secrets\nr = requests.post(api + '/jobs', json={'method': 'submit', "
     "'job_id': jid, 'nonce': secrets.token_hex(8)})\nprint(r.json())"),
    ("a job queue over a socket, a login without a nonce",
     "import socket, json\ns = socket.create_connection(('127.0.0.1', 9000))\n"
     "s.sendall(json.dumps({'method': 'login', 'params': {'login': user, 'pass': pw}}).encode())\n"
     "s.sendall(json.dumps({'method': 'status', 'params': {'job_id': jid}}).encode())"),
    ("an OAuth login with a nonce", "import requests, secrets\nnonce = secrets.token_urlsafe(16)\n"
     "params = dict(response_type='code', client_id=cid, redirect_uri=uri, scope='openid', "
     "nonce=nonce, state=st)\nprint(requests.Request('GET', auth_url, params=params).prepare().url)"),
    ("a web form login", "import requests\ns = requests.Session()\nr = s.post('https://example.org/login', "
     "data={'login': user, 'pass': pw, 'submit': 'Log in'})\nprint(r.status_code)"),
    ("a web form's job posted with a nonce", "import requests\ns = requests.Session()\n"
     "s.post(url + '/login', data=dict(method='login', login=user, password=pw))\n"
     "s.post(url + '/submit', data=dict(method='submit', job_id=j, nonce=n))"),
    ("a JSON-RPC call to a local node with a nonce", "import socket\n"
     "s = socket.create_connection(('127.0.0.1', 8545))\ns.sendall(b'{\"method\": "
     "\"eth_getTransactionCount\", \"params\": [\"' + addr + b'\"], \"nonce\": 1}')"),
    ("a tool's name printed through %", "print('use %s carefully' % 'ngrok')"),
    ("a tool's name in a message", "tool = 'ngrok'\nmsg = 'use %s carefully: %s' % (tool, why)\nprint(msg)"),
    ("a log line naming jprq", "import logging\n"
     "logging.info('{} tunnel on port {} is not allowed here'.format('jprq', port))"),
    ("echo of a tool's name", "import os\nos.system('echo %s is blocked on port %d' % ('ngrok', port))"),
    ("echo built by .format", "import subprocess\nmsg = 'echo {} tunnels are blocked: {}'.format('jprq', why)\n"
     "subprocess.run(msg, shell=True)"),
    ("grep for a tool's name", "import subprocess\npat = '%s' % 'ngrok'\n"
     "subprocess.run(['grep', '-c', pat, logfile])"),
    ("a commit message naming ngrok", "import subprocess\n"
     "subprocess.run(['git', 'commit', '-m', 'remove {} from docs'.format('ngrok')])"),
    ("notes appended by a template", "import subprocess\nsubprocess.run('echo \"%s\" >> notes.txt' "
     "% 'pinggy, jprq and ngrok are off limits', shell=True)"),
    ("a docs page fetched by .format", "import subprocess\n"
     "subprocess.run('curl -s {}'.format('https://ngrok.com/docs'), shell=True)"),
    ("pip show by a template", "import subprocess\nsubprocess.run('pip show %s' % pkg, shell=True)"),
    ("setup() of setuptools", "from setuptools import setup\nsetup(name='demo', version='0.1')"),
    ("setup() of a course's helper", "import colab_env\ncolab_env.setup(gpu=True)"),
    ("pinggy's docs in a comment", "# pinggy.start_tunnel(forwardto='localhost:8000') would open a "
     "public URL\nimport gradio as gr\ngr.Interface(fn=f, inputs='text', outputs='text').launch()"),
    ("pinggy's docs in a string", "doc = '''tunnel = pinggy.Tunnel(); tunnel.start()'''\nprint(doc)"),
    ("a training command by replace", "import subprocess\nt = 'python train.py --epochs EPOCHS'\n"
     "subprocess.run(t.replace('EPOCHS', str(n)), shell=True)"),
    ("a training command by Template", "import string, subprocess\n"
     "t = string.Template('python train.py --lr $lr --data $data')\n"
     "subprocess.run(t.substitute(lr=lr, data=path), shell=True)"),
    ("a report row by format_map", "row = '{name}: {score}'.format_map(r)\nprint(row)"),
    ("a download URL by a lambda", "import os\nurl = lambda f: 'https://example.org/data/%s.csv' % f\n"
     "os.system('wget -q ' + url(name))"),
    ("seeds run by a helper", "import subprocess\ndef cmd(n):\n    return 'python train.py --seed %d' % n\n"
     "for i in range(3):\n    subprocess.run(cmd(i), shell=True)"),
    ("an evaluation's words joined", "import subprocess\nparts = ['python', 'eval.py', ckpt]\n"
     "subprocess.run(' '.join(parts), shell=True)"),
    ("a loop of experiments re-binding the command", "import subprocess\ncmd = 'python a.py %s' % x\n"
     "while todo:\n    subprocess.run(cmd, shell=True)\n    cmd = 'python b.py %s' % todo.pop()"),
]


@pytest.mark.parametrize("what, cell", HONEST, ids=[h[0] for h in HONEST])
def test_an_honest_cell_near_the_new_rules_is_left_alone(what, cell):
    assert _cell_signatures(cell) == set(), what


def _fan_out(calls: int) -> str:
    """Helpers calling helpers, eight calls each, fifteen deep, called with an argument only
    known when it runs: each reading of them stops at its step and helper bounds."""
    helpers = "".join(f"f{i} = lambda p: " + " + ".join([f"f{i - 1}(p)"] * 8) + "\n"
                      for i in range(1, 16))
    return "import subprocess\nf0 = lambda p: 'ngrok %s' % p\n" + helpers + "".join(
        f"c{j} = f15(x) + f15('a')\nsubprocess.run(c{j}, shell=True)\n" for j in range(calls))


def _counted(monkeypatch, method: str) -> list[int]:
    """How many times the cell reader's ``method`` runs (the real one): work, not time, so
    the bound holds on a loaded machine."""
    from colab_guard.detect import cells
    calls, real = [0], getattr(cells._Reader, method)

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return real(self, *args, **kwargs)
    monkeypatch.setattr(cells._Reader, method, counting)
    return calls


def test_reading_templates_through_helpers_stays_bounded(monkeypatch):
    """Each of the 100 readings stops at its step bound (8,400 readings of a part here;
    unbounded, each re-read the whole fan-out: 8^15 calls)."""
    from colab_guard.detect.cells import MAX_LOOSE_STEPS
    readings = _counted(monkeypatch, "loose")
    _cell_signatures(_fan_out(100))
    assert 0 < readings[0] <= 100 * 2 * MAX_LOOSE_STEPS


def _chain(depth: int) -> str:
    helpers = "".join(f"f{i} = lambda p: f{i - 1}(p)\n" for i in range(1, depth))
    return HEAD + "f0 = lambda p: 'ngrok tcp %d' % p\n" + helpers + f"cmd = f{depth - 1}(port)\n" + RUN


def test_a_template_through_a_chain_of_helpers_is_refused():
    assert FORBIDDEN in _cell_signatures(_chain(6))


@pytest.mark.xfail(strict=True, reason="a reading goes 20 steps deep (two a helper) and reads "
                   "MAX_LOOSE_INLINED helpers' calls: its cost is bounded, so is its depth")
def test_a_template_through_twelve_helpers_is_refused():
    assert FORBIDDEN in _cell_signatures(_chain(12))


def test_the_chain_of_twelve_helpers_really_starts_ngrok(stand_in_path, tmp_path):
    assert "tcp 22" in _runs_ngrok(_chain(12), stand_in_path, tmp_path, "twelve helpers")


def test_a_long_sum_is_read_once(monkeypatch):
    """A sum of 150 parts, 40 times: each part folded a few times (12,283 folds here; read
    once per partial sum, as before, 268,123: the square of its length)."""
    folds = _counted(monkeypatch, "fold")
    line = " + ".join(f"b'k{i}' + x" for i in range(75))
    cell = "import socket\ns = socket.socket()\n" + "".join(f"s.sendall({line})\n" for _ in range(40))
    _cell_signatures(cell)
    assert 0 < folds[0] <= 40 * 150 * 6
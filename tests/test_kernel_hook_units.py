"""The kernel hook's pure parts: the cell normaliser, the notice's escaping, the loader's rule
for cell signatures, and the startup file the package installs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from colab_guard.detect.cells import normalise_cell
from colab_guard.detect.signatures import SignatureError, parse_text
from colab_guard.kernel.notice import as_html, as_text

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cell, line", [
    ("import subprocess\nsubprocess.Popen(['./xm' + 'rig', '-o', 'p:1'])", "run: ./xmrig -o p:1"),
    ("import subprocess as sp\nsp.run(f\"{'xm'}rig\", shell=True)", "run: xmrig"),
    ("cmd = 'xm'\ncmd += 'rig'\n!{cmd} -o x", "run: xmrig -o x"),
    ("%%bash\ncd /tmp\n./xmrig -o pool:1\n", "run: ./xmrig -o pool:1"),
    ("t = ''.join(map(chr, [120, 109, 114, 105, 103]))", "hidden: xmrig"),
    ("t = bytes.fromhex('786d726967').decode()", "hidden: xmrig"),
    ("t = 'gir' + 'mx'\nt = t[::-1]", "hidden: xmrig"),
    ("u = 'c3RyYXR1bSt0Y3A6Ly9wb29sLmV4YW1wbGUubmV0OjMzMzM='", "hidden: stratum+tcp://pool.example.net:3333"),
    ("import os\nos.execv('/bin/sh', ['sh', '-c', 'xmrig'])", "run: sh -c xmrig"),
    ("import libtorrent as lt", "import: libtorrent"),
])
def test_disguises_are_undone(cell, line):
    assert line in normalise_cell(cell).splitlines()


def test_comments_vanish_and_plain_strings_are_only_text():
    lines = normalise_cell("# run xmrig\nprint('xmrig stratum+tcp://p:1')").splitlines()
    assert lines == ["text: xmrig stratum+tcp://p:1"]


def test_nothing_is_evaluated():
    marker = ROOT / "tests" / "should-not-exist"
    normalise_cell(f"open({str(marker)!r}, 'w').write('x')\n__import__('os').system('touch {marker}')")
    assert not marker.exists()


def test_notice_escapes_evidence_and_refuses_script_links():
    notice = {"incident_id": "<b>id</b>", "detected": "crypto-mining — <script>alert(1)</script>",
              "action": "interrupt", "message": "Stop & <think>", "policy_url": "javascript:alert(1)"}
    html = as_html(notice)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>id</b>" not in html and "Stop &amp; &lt;think&gt;" in html
    assert 'href="javascript' not in html
    assert "<script>alert(1)</script>" in as_text(notice)  # plain text is shown as text


def test_a_signature_cannot_mix_cell_and_process_fields():
    text = """
signatures:
  - id: mixed
    category: crypto-mining
    severity: high
    description: x
    when: {all: [{cell: {contains: xmrig}}, {name: {equals: xmrig}}]}
    examples: {match: [{cell: xmrig}], no_match: [{cell: ls}]}
"""
    with pytest.raises(SignatureError, match="field 'when'.*either a cell"):
        parse_text(text, "mixed.yaml")


def test_startup_file_is_shipped_and_inert_outside_guarded_kernels():
    shipped = ROOT / "jupyter-config" / "ipython_startup" / "50-colab-guard.py"
    assert '"jupyter-config/ipython_startup/50-colab-guard.py" = "etc/ipython/startup/50-colab-guard.py"' \
        in (ROOT / "pyproject.toml").read_text()
    installed = Path(sys.prefix) / "etc" / "ipython" / "startup" / "50-colab-guard.py"
    assert installed.read_text() == shipped.read_text()
    # a terminal IPython of the same environment runs the file and loads nothing
    out = subprocess.run([sys.executable, "-m", "IPython", "--no-banner", "-c",
                          "import sys; ran = 'colab_guard.kernel' in sys.modules\n"
                          "import colab_guard.kernel as k; print('RAN', ran, 'GUARD', k._guard)"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert "RAN True GUARD None" in out.stdout, out.stderr


def test_the_checks_own_copy_of_a_tree_is_what_it_read():
    """kernel/extension.py _own_copy: the tree the check reads and IPython compiles, copied
    from one other transformers saw: a node of the original changed later changes nothing,
    a subclass's property is read once, the user's own attributes (a lambda, which a pickle
    copy would fail on) are dropped, positions kept."""
    import ast

    from colab_guard.kernel.extension import _own_copy

    class Shifty(ast.Constant):
        reads = 0

        @property
        def value(self):
            Shifty.reads += 1
            return "@@subscribe" if Shifty.reads == 1 else "mining.subscribe"

        @value.setter
        def value(self, _):
            pass

    tree = ast.parse("send('x')\nsend('y')")
    tree.body[1].value.args[0] = ast.copy_location(Shifty(), tree.body[1].value.args[0])
    tree.body[1].value.args[0].kind = None
    tree._keep = lambda: None
    copy = _own_copy(tree)
    tree.body[0].value.args[0].value = "mining.authorize"  # the original, rewritten after
    assert copy is not tree and not hasattr(copy, "_keep")
    assert type(copy.body[1].value.args[0]) is ast.Constant
    first = ast.unparse(copy)
    assert first == ast.unparse(copy) and "mining.authorize" not in first
    assert copy.body[1].lineno == 2
    compile(copy, "<cell>", "exec")

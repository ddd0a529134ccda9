"""Honest notebooks swept by the cell check (hn21: benchmarks/honest_sweep.py over 3,700 real
notebooks): an optional tunnel behind a Colab form field left as it is.

Stable Diffusion launchers and dataset tools offer ngrok behind a form field (a token left
empty, an action picked from a list); with the form as it stands in the cell's text the branch
never runs, and the cell check read it anyway and interrupted the honest default run. A branch
the cell's form fields rule out is now not read (colab_guard/detect/form_branches.py). The
same cells with the field filled in, or with any way to rebind the field the AST does not show,
are still refused (STILL_RECOGNISED)."""

from __future__ import annotations

import pytest

from colab_guard.detect.cells import CellProcess
from colab_guard.detect.engine import Engine
from colab_guard.detect.signatures import load_signatures
from colab_guard.observe.model import Snapshot

RULES = load_signatures()


def cell_detections(source: str) -> list[str]:
    found = Engine(RULES).evaluate(Snapshot("k", 1.0, [CellProcess(pid=7, is_kernel=True,
                                                                   cell=source)]))
    return sorted({d.signature.id for d in found})


# TheLastBen/fast-stable-diffusion, fast_stable_diffusion_AUTOMATIC1111.ipynb (minimised): the
# web UI with Gradio's share link; ngrok only when a token is typed into the form
SD_LAUNCHER = '''from IPython.utils import capture
from pyngrok import ngrok, conf

Ngrok_token = "" #@param {type:"string"}
#@markdown - Input your ngrok token if you want to use ngrok server
User = "" #@param {type:"string"}
auth = f"--gradio-auth {User}"
with capture.capture_output() as cap:
  %cd /content/gdrive/MyDrive/sd/stable-diffusion-webui/
  !sed -i "s@map_location='cpu'@map_location='cuda'@" modules/extras.py
share = ''
if Ngrok_token != "":
  ngrok.kill()
  srv = ngrok.connect(7860, pyngrok_config=conf.PyngrokConfig(auth_token=Ngrok_token), bind_tls=True).public_url
else:
  share = '--share'
!python /content/gdrive/MyDrive/sd/stable-diffusion-webui/webui.py $share --xformers
'''

# hollowstrawberry/kohya-colab, Dataset_Maker.ipynb and Spanish_Dataset_Maker.ipynb
# (minimised): FiftyOne's app in a new tab through ngrok only for the interactive actions
DATASET_MAKER = '''if "step1_installed_flag" not in globals():
  raise Exception("Please run step 1 first!")
accion = "Borrar duplicados" #@param ["Borrar duplicados","Abrir area interactiva"]
action = accion
open_in_new_tab = False #@param {type:"boolean"}
ngrok_token = ""
import fiftyone as fo
from pyngrok import ngrok, conf
from portpicker import pick_unused_port
if not get_ipython().__dict__['user_ns']['_exit_code']:
  step3_installed_flag = True
dataset = fo.Dataset.from_dir(images_folder, dataset_type=fo.types.ImageDirectory)
if "interactiva" in action:
  port = pick_unused_port()
  session = fo.launch_app(dataset, port=port, auto=not open_in_new_tab)
  if open_in_new_tab:
    conf.get_default().auth_token = ngrok_token
    public_url = ngrok.connect(port).public_url
'''

HONEST = {
    "sd-launcher-ngrok-token-empty": SD_LAUNCHER,
    "dataset-maker-action-not-interactive": DATASET_MAKER,
    "tick-box-left-unticked": ("use_ngrok = False #@param {type:\"boolean\"}\n"
                               "from pyngrok import ngrok\nif use_ngrok:\n"
                               "    print(ngrok.connect(8188))\n"),
    "mode-picked-from-a-list": ("mode = \"gradio\" #@param [\"gradio\", \"cloudflared\"]\n"
                                "if mode == \"cloudflared\":\n"
                                "    !cloudflared tunnel --url http://127.0.0.1:7860\n"
                                "else:\n    !python app.py --share\n"),
}


@pytest.mark.parametrize("source", HONEST.values(), ids=HONEST.keys())
def test_a_branch_the_form_rules_out_is_not_read(source):
    assert [s for s in cell_detections(source) if not s.startswith("acquire-")] == []


STILL_RECOGNISED = {
    # the field filled in: Colab writes the value into the cell's text
    "token-typed-in": (SD_LAUNCHER.replace('Ngrok_token = ""', 'Ngrok_token = "2abcDEF"'),
                       "cell-python-tunnel"),
    "box-ticked": (HONEST["tick-box-left-unticked"].replace("False", "True"),
                   "cell-python-tunnel"),
    "the-other-branch": (HONEST["mode-picked-from-a-list"].replace('mode = "gradio"',
                                                                   'mode = "cloudflared"'),
                         "proxy-known-tool"),
    # no form: a plain variable is not a field the user sees
    "no-param-comment": ("use_ngrok = False\nfrom pyngrok import ngrok\nif use_ngrok:\n"
                         "    ngrok.connect(8188)\n", "cell-python-tunnel"),
    # the field bound again, or rebound where the AST does not show it
    "rebound": ("tok = \"\" #@param {type:\"string\"}\ntok = 'x'\nfrom pyngrok import ngrok\n"
                "if tok != '':\n    ngrok.connect(22, 'tcp')\n", "cell-python-tunnel"),
    "rebound-in-a-loop": ("tok = \"\" #@param {type:\"string\"}\nfor tok in ['x']:\n    pass\n"
                          "from pyngrok import ngrok\nif tok:\n    ngrok.connect(22)\n",
                          "cell-python-tunnel"),
    "global-in-a-function": ("tok = \"\" #@param {type:\"string\"}\ndef f():\n    global tok\n"
                             "    tok = 'x'\nf()\nfrom pyngrok import ngrok\nif tok:\n"
                             "    ngrok.connect(22)\n", "cell-python-tunnel"),
    "globals-written": ("tok = \"\" #@param {type:\"string\"}\nglobals()['tok'] = 'x'\n"
                        "from pyngrok import ngrok\nif tok:\n    ngrok.connect(22)\n",
                        "cell-python-tunnel"),
    "globals-updated": ("tok = \"\" #@param {type:\"string\"}\nglobals().update(tok='x')\n"
                        "from pyngrok import ngrok\nif tok:\n    ngrok.connect(22)\n",
                        "cell-python-tunnel"),
    "user-ns-written": ("tok = \"\" #@param {type:\"string\"}\n"
                        "get_ipython().user_ns['tok'] = 'x'\nfrom pyngrok import ngrok\n"
                        "if tok:\n    ngrok.connect(22)\n", "cell-python-tunnel"),
    "exec": ("tok = \"\" #@param {type:\"string\"}\nexec(\"tok = 'x'\")\n"
             "from pyngrok import ngrok\nif tok:\n    ngrok.connect(22)\n", "cell-python-tunnel"),
    "store-magic": ("tok = \"\" #@param {type:\"string\"}\n%store -r tok\n"
                    "from pyngrok import ngrok\nif tok:\n    ngrok.connect(22)\n",
                    "cell-python-tunnel"),
    "time-magic-binds": ("tok = \"\" #@param {type:\"string\"}\n%time tok = 'x'\n"
                         "from pyngrok import ngrok\nif tok:\n    ngrok.connect(22)\n",
                         "cell-python-tunnel"),
    "shell-kept": ("tok = \"\" #@param {type:\"string\"}\nip = get_ipython()\n"
                   "ip.push({'tok': 'x'})\nfrom pyngrok import ngrok\nif tok:\n"
                   "    ngrok.connect(22)\n", "cell-python-tunnel"),
    "main-module": ("tok = \"\" #@param {type:\"string\"}\nimport sys\n"
                    "sys.modules['__main__'].tok = 'x'\nfrom pyngrok import ngrok\nif tok:\n"
                    "    ngrok.connect(22)\n", "cell-python-tunnel"),
    "setattr": ("tok = \"\" #@param {type:\"string\"}\nimport __main__\n"
                "setattr(__main__, 'tok', 'x')\nfrom pyngrok import ngrok\nif tok:\n"
                "    ngrok.connect(22)\n", "cell-python-tunnel"),
    "ipython-by-module": ("tok = \"\" #@param {type:\"string\"}\nimport IPython\n"
                          "IPython.get_ipython().push({'tok': 'x'})\nfrom pyngrok import ngrok\n"
                          "if tok:\n    ngrok.connect(22)\n", "cell-python-tunnel"),
    "ipython-aliased": ("tok = \"\" #@param {type:\"string\"}\n"
                        "from IPython import get_ipython as shell\nshell().ex(\"tok = 'x'\")\n"
                        "from pyngrok import ngrok\nif tok:\n    ngrok.connect(22)\n",
                        "cell-python-tunnel"),
    "main-imported-by-name": ("tok = \"\" #@param {type:\"string\"}\nimport importlib\n"
                              "importlib.import_module('__main__').tok = 'x'\n"
                              "from pyngrok import ngrok\nif tok:\n    ngrok.connect(22)\n",
                              "cell-python-tunnel"),
    "frame-globals": ("tok = \"\" #@param {type:\"string\"}\nimport inspect\n"
                      "inspect.stack()[0].frame.f_globals['tok'] = 'x'\n"
                      "from pyngrok import ngrok\nif tok:\n    ngrok.connect(22)\n",
                      "cell-python-tunnel"),
    # a test with an unknown part (which may run first and rebind) is not decided
    "unknown-part": ("tok = \"\" #@param {type:\"string\"}\nfrom pyngrok import ngrok\n"
                     "if refresh() or tok:\n    ngrok.connect(22)\n", "cell-python-tunnel"),
    # the field read before it is bound (a value from an earlier cell)
    "tested-before-bound": ("from pyngrok import ngrok\nif tok:\n    ngrok.connect(22)\n"
                            "tok = \"\" #@param {type:\"string\"}\n", "cell-python-tunnel"),
    # a branch inside a function runs when called, with the module's names then
    "inside-a-function": ("tok = \"\" #@param {type:\"string\"}\nfrom pyngrok import ngrok\n"
                          "def go():\n    if tok:\n        ngrok.connect(22)\ngo()\n",
                          "cell-python-tunnel"),
    # the unticked branch's sibling still read
    "miner-in-the-else": ("use_gpu = False #@param {type:\"boolean\"}\nif use_gpu:\n"
                          "    print('gpu')\nelse:\n"
                          "    !./xmrig -o pool.supportxmr.com:443 -u 4Abc --tls\n",
                          "mining-known-miner"),
}


@pytest.mark.parametrize("source,signature", STILL_RECOGNISED.values(),
                         ids=STILL_RECOGNISED.keys())
def test_what_the_form_does_not_decide_is_still_read(source, signature):
    assert signature in cell_detections(source)


def _kernel_detections(*cells: str) -> list[str]:
    """The last cell's detections, in a kernel that ran the earlier ones first."""
    engine, found = Engine(RULES), []
    for source in cells:
        found = engine.evaluate(Snapshot("k", 1.0, [CellProcess(pid=7, is_kernel=True,
                                                                cell=source)]))
    return sorted({d.signature.id for d in found})


UNTICKED_TUNNEL = ("use_tunnel = False #@param {type:\"boolean\"}\nflip()\n"
                   "if use_tunnel:\n    import pinggy\n    pinggy.start_tunnel(forwardto='localhost:8888')\n")

#: An earlier cell that can set the field between its binding and the test without the form
#: cell's text showing it: the branch is read, as any other code
EARLIER_REBINDERS = {
    "global-in-a-function": "def flip():\n    global use_tunnel\n    use_tunnel = True\n",
    "namespace-from-a-thread": "import threading\ndef flip():\n    pass\n"
                               "threading.Thread(target=lambda: [globals().__setitem__("
                               "'use_tunnel', True) for _ in iter(int, 1)], daemon=True).start()\n",
    "namespace-written": "def flip():\n    pass\nglobals()['use_tunnel'] = True\n",
    "a-module-written-to-disk": "%%writefile flipper.py\nimport __main__\n__main__.use_tunnel = True\n",
}


@pytest.mark.parametrize("earlier", EARLIER_REBINDERS.values(), ids=EARLIER_REBINDERS.keys())
def test_a_field_an_earlier_cell_may_rebind_unseen_is_not_taken_as_written(earlier):
    assert "cell-python-tunnel" in _kernel_detections(earlier, UNTICKED_TUNNEL)


def test_an_earlier_cell_that_rebinds_nothing_unseen_keeps_the_form_decided():
    earlier = "def flip():\n    print('ready')\nimport numpy as np\nx = np.zeros(3)\n"
    assert _kernel_detections(earlier, UNTICKED_TUNNEL) == []


def test_an_earlier_cell_reading_a_value_from_globals_keeps_the_form_decided():
    """TheLastBen's model cell picks a model by its name (``globals()[XL_Model]``): a value
    read, no name rebound."""
    earlier = "Model_A = 'a.ckpt'\nchoice = 'Model_A'\npath = globals()[choice]\n"
    assert _kernel_detections(earlier, UNTICKED_TUNNEL) == []

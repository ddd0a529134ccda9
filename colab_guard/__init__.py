"""colab-guard: keep hosted Jupyter services free of abuse.

observe (processes, sockets, GPU) -> detect (signatures) -> act (policy) ->
record (incident log, events, metrics).
"""

__version__ = "0.1.0"


def _jupyter_labextension_paths():
    # The JupyterLab extension, built into colab_guard/labextension (see labextension/).
    return [{"src": "labextension", "dest": "colab-guard"}]


def _jupyter_server_extension_points():
    from .app import ColabGuard

    return [{"module": "colab_guard.app", "app": ColabGuard}]

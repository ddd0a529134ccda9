# Installed by colab-guard into {sys.prefix}/etc/ipython/startup/: loads its kernel hook in
# kernels started by a guarded Jupyter server; does nothing anywhere else. (IPython runs
# this file in the user's namespace, so it binds no names.)
try:
    __import__("colab_guard.kernel", fromlist=["load_in_kernel"]).load_in_kernel()
except ImportError:
    pass  # colab-guard was uninstalled and left this file behind

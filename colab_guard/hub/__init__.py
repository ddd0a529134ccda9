"""colab-guard's JupyterHub service: every user's incidents, strikes, bans and appeals.

In jupyterhub_config.py: ``from colab_guard.hub import configure; configure(c)``
(see configure.py). The service itself: ``python -m colab_guard.hub`` (app.py).
"""

from .configure import configure

__all__ = ["configure"]

"""``python -m colab_guard.watch [--Watcher.<name>=VALUE ...]``: the node watcher, without
the rest of the command line tool (which imports the Jupyter server)."""

import sys

from .app import main

sys.exit(main())

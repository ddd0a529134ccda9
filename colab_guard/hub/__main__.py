"""``python -m colab_guard.hub [--config=jupyterhub_config.py] [--ColabGuardHub.<name>=VALUE]``"""

import sys

from .app import main

sys.exit(main())

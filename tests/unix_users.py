"""Throwaway Unix users for tests that need someone other than root (CI runs as root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def throwaway_user(prefix: str) -> Iterator[pwd.struct_passwd]:
    """A new unprivileged user without a home or a login shell, removed afterwards; the
    test is skipped where users cannot be made (not root, no useradd)."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root to create a throwaway user")
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)

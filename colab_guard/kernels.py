"""What the guard needs of the kernels it watches, behind one small interface.

``Kernels`` is all the monitor and the kernel channel know of kernels: their pids,
interrupt, shut down, the notebook a kernel serves, and a hook on kernel starts.
``JupyterKernels`` implements it over jupyter_server's kernel and session managers;
tests build a monitor over a fake with no server at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

#: Called with a new kernel's id and the environment it will start with; may add to the
#: environment, or raise (tornado's HTTPError) to refuse the start.
StartHook = Callable[[str, dict], None]


class Kernels(Protocol):
    def pids(self) -> dict[str, int]:
        """Running kernels and their pids (kernels still starting have none yet)."""

    def __contains__(self, kernel_id: str) -> bool: ...

    async def interrupt(self, kernel_id: str) -> None: ...

    async def shutdown(self, kernel_id: str) -> None: ...

    async def notebook_path(self, kernel_id: str) -> str | None: ...


class JupyterKernels:
    """The kernels of a Jupyter server."""

    def __init__(self, kernel_manager, session_manager):
        self.km, self.sessions = kernel_manager, session_manager

    def pids(self) -> dict[str, int]:
        found = {}
        for kernel_id in list(self.km.list_kernel_ids()):
            try:
                provisioner = self.km.get_kernel(kernel_id).provisioner
                pid = getattr(provisioner, "pid", None) if provisioner else None
            except KeyError:
                continue
            if pid:
                found[kernel_id] = pid
        return found

    def __contains__(self, kernel_id: str) -> bool:
        return kernel_id in self.km

    async def interrupt(self, kernel_id: str) -> None:
        await self.km.interrupt_kernel(kernel_id)

    async def shutdown(self, kernel_id: str) -> None:
        await self.km.shutdown_kernel(kernel_id)

    async def notebook_path(self, kernel_id: str) -> str | None:
        try:
            sessions = await self.sessions.list_sessions()
        except Exception:
            return None
        for session in sessions:
            if (session.get("kernel") or {}).get("id") == kernel_id:
                return session.get("path")
        return None

    def on_start(self, hook: StartHook) -> None:
        """Call ``hook`` before every new kernel starts (not on restarts, which keep the
        environment the kernel first started with).

        jupyter_server has no hook that can both refuse a start with an HTTP status the
        frontend shows and add to the kernel's environment before it launches (a kernel
        provisioner would have to be named in every kernelspec), so the kernel manager's
        ``start_kernel`` is wrapped, on this instance only."""
        km = self.km
        start_kernel = km.start_kernel

        async def guarded_start_kernel(*args, kernel_id=None, **kwargs):
            if kernel_id is None or kernel_id not in km:
                kernel_id = kernel_id or str(uuid.uuid4())
                kwargs["env"] = dict(kwargs.get("env") or {})
                hook(kernel_id, kwargs["env"])
            return await start_kernel(*args, kernel_id=kernel_id, **kwargs)

        km.start_kernel = guarded_start_kernel

"""The node watcher: the guard as a root service over every notebook kernel of the machine.

app.py (the ``Watcher``: configuration, wiring, run), kernels.py (every kernel on the
machine, as root sees them), proc_events.py (the netlink proc connector).
"""

"""The wire format between the node watcher and the users' Jupyter servers.

The watcher (root) listens on a Unix socket in a root-owned folder (``Watcher.user_socket``,
default ``/run/colab-guard/watch.sock``), which any local process may connect to. The
watcher tells who connected by the socket's peer credentials (``SO_PEERCRED``: the uid
the kernel vouches for, which the client cannot choose), and sends a client only the
incidents of its own uid's user. The client checks the same way that the listener is
root's, so that no user can stand in for the watcher.

Newline-delimited JSON, as the kernel channel (kernel/protocol.py):

client -> watcher:  hello {since}        the time of the last incident it has seen (0: none)
                    appeal {request, incident_id, text}   the user appeals their own incident
watcher -> client:  welcome {user, uid, covered, watcher_pid, sample_interval, dry_run}
                    incident {phase, action, incident, message, policy_url}
                        phase "acting": recorded, about to be acted on (tell the kernel now);
                        phase "done": complete, with every action's outcome. The catch-up
                        (incidents of the user after ``since``) comes as "done" ones.
                    caught_up {count}    the catch-up is over; what follows is live
                    appeal {request, appeal} or {request, error, status}: the appeal's answer

``covered``: whether the watcher watches this uid's kernels at all (a system user's or
root's server, or a user outside ``Watcher.users``, is not covered, and gets no incidents).
Kept free of imports from the rest of colab_guard: both sides load it.
"""

from __future__ import annotations

import socket
import struct

from ..kernel.protocol import MAX_LINE, decode, encode

DEFAULT_SOCKET = "/run/colab-guard/watch.sock"
#: incidents sent at most in one catch-up (the newest, oldest first)
CATCH_UP_LIMIT = 200
HELLO_TIMEOUT = 5.0


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


__all__ = ["DEFAULT_SOCKET", "CATCH_UP_LIMIT", "HELLO_TIMEOUT", "MAX_LINE", "decode", "encode",
           "peer_uid"]

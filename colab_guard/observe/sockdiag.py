"""The peer of a UNIX stream socket, asked of the kernel through sock_diag (netlink).

/proc shows a process's UNIX socket as `socket:[INODE]` and /proc/net/unix lists it, but
neither says which socket is at its other end: only the kernel's socket diagnostics do
(what `ss -x` shows as the peer). Asked one socket at a time, by inode (the exact lookup:
no dump of every socket of the machine), in the guard's network namespace.
"""

from __future__ import annotations

import errno
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
UDIAG_SHOW_PEER = 0x4
UNIX_DIAG_PEER = 2
ANY_STATE = 0xFFFFFFFF
NO_COOKIE = 0xFFFFFFFF  # the lookup by inode alone (UNIX_DIAG_NOCOOKIE)

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_REQUEST = struct.Struct("=BBHIIIII")  # unix_diag_req
_MESSAGE = struct.Struct("=BBBBIII")  # unix_diag_msg: family, type, state, pad, inode, cookie
_ATTRIBUTE = struct.Struct("=HH")  # rtattr: length, type


class UnixPeers:
    """Peers of UNIX sockets, one netlink socket for a batch of questions (a tick's)."""

    def __init__(self):
        self._netlink: socket.socket | None = None
        self._sequence = 0
        self.known: dict[int, int | None] = {}

    def __enter__(self) -> UnixPeers:
        return self

    def __exit__(self, *exc) -> None:
        if self._netlink is not None:
            self._netlink.close()

    def peer(self, inode: int) -> int | None:
        """The inode of the socket at the other end of UNIX socket ``inode``; None for a
        socket that is no UNIX one (an inet socket), has no peer, or cannot be asked."""
        if inode not in self.known:
            self.known[inode] = self._ask(inode)
        return self.known[inode]

    def _ask(self, inode: int) -> int | None:
        try:
            if self._netlink is None:
                self._netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                                              NETLINK_SOCK_DIAG)
                self._netlink.settimeout(1.0)
            self._sequence += 1
            request = _REQUEST.pack(socket.AF_UNIX, 0, 0, ANY_STATE, inode, UDIAG_SHOW_PEER,
                                    NO_COOKIE, NO_COOKIE)
            self._netlink.send(_HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY,
                                            NLM_F_REQUEST, self._sequence, 0) + request)
            while True:  # (an answer to an earlier question, timed out, is skipped)
                reply = self._netlink.recv(8192)
                if _HEADER.unpack_from(reply)[3] == self._sequence:
                    return _peer_in(reply, inode)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.EPROTONOSUPPORT, errno.EACCES) \
                    and self._netlink is not None:
                self._netlink.close()  # timed out or broken: a fresh one next time
                self._netlink = None
            return None


def _peer_in(reply: bytes, inode: int) -> int | None:
    length, kind = _HEADER.unpack_from(reply)[:2]
    if kind == NLMSG_ERROR or kind != SOCK_DIAG_BY_FAMILY or length > len(reply):
        return None  # (ENOENT: no UNIX socket of that inode)
    if _MESSAGE.unpack_from(reply, _HEADER.size)[4] != inode:
        return None
    at = _HEADER.size + _MESSAGE.size
    while at + _ATTRIBUTE.size <= length:
        size, kind = _ATTRIBUTE.unpack_from(reply, at)
        if size < _ATTRIBUTE.size:
            break
        if kind == UNIX_DIAG_PEER and size >= _ATTRIBUTE.size + 4:
            return struct.unpack_from("=I", reply, at + _ATTRIBUTE.size)[0] or None
        at += (size + 3) & ~3
    return None

"""What each TCP connection has carried: the kernel's ``tcp_info``, by socket inode.

/proc/net/tcp says who is connected to whom, never how much passes: a miner's pool
connection (a few small messages a minute, most of them pushed by the pool) and a client
hammering a local service look the same there. The kernel keeps byte counters and the time
since data last went each way for every TCP socket, and gives them to anyone who asks
through a ``NETLINK_SOCK_DIAG`` dump (what ``ss -ti`` shows; no privilege needed for the
reader's own network namespace). One dump of the ESTABLISHED and SYN_SENT sockets costs
about a millisecond per thousand sockets; the behaviour module asks for one only when a
process is a candidate.

A dump covers the network namespace the netlink socket was made in. For a process in
another namespace (``unshare -n``, a container), ``Dumper.for_namespace`` makes the
socket from a helper thread that joined that namespace first (``setns``: root only);
without the privilege the traffic of those sockets is unknown, and said to be.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_REQUEST_DUMP = 0x1, 0x301
NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: look the socket up by its addresses alone
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_INFO = 2
CLONE_NEWNET = 0x40000000
#: TCP states asked for: ESTABLISHED (1) and SYN_SENT (2)
STATES = (1 << 1) | (1 << 2)
ALL_STATES = 0xFFFF
_REQUEST = struct.Struct("=BBBBI48s")
#: unix_diag_req (family, protocol, pad, states, inode, show, cookie) and netlink_diag_req
#: (family, protocol, pad, inode, show, cookie); where each answer holds its socket's inode
_UNIX_REQUEST = struct.Struct("=BBHIIIII")
_NETLINK_REQUEST = struct.Struct("=BBHIIII")
_UNIX_INODE_AT, _NETLINK_INODE_AT, _INET_INODE_AT = 4, 16, 68
NDIAG_PROTO_ALL = 255
_HEADER = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
#: offsets in struct tcp_info (linux/tcp.h)
_LAST = struct.Struct("=IIII")  # last_data_sent, last_ack_sent, last_data_recv, last_ack_recv
_LAST_AT = 44
_BYTES = struct.Struct("=QQ")  # bytes_acked, bytes_received
_BYTES_AT = 120
_SEGS = struct.Struct("=II")  # data_segs_in, data_segs_out
_SEGS_AT = 152


@dataclass(frozen=True)
class TcpInfo:
    """One connection's counters, as the kernel keeps them."""

    state: int  # 1 ESTABLISHED, 2 SYN_SENT
    sent: int  # data bytes the peer acknowledged
    received: int  # data bytes received
    data_segments: int  # data segments in and out
    since_sent_ms: int  # since data was last sent
    since_received_ms: int  # since data was last received (or the connection opened)


class Dumper:
    """Dumps of one network namespace's TCP connections (a netlink socket kept open)."""

    def __init__(self, sock: socket.socket | None = None):
        self._sock = sock
        self._seq = 0
        self.broken: str | None = None  # why dumps cannot be had, if so

    @classmethod
    def for_namespace(cls, pid: int) -> Dumper:
        """A dumper for the network namespace of process ``pid`` (needs CAP_SYS_ADMIN)."""
        made: list = []

        def make():
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                finally:
                    os.close(fd)
                made.append(_netlink())
            except OSError as err:
                made.append(err)

        # setns changes only the calling thread's namespace: a thread of its own, which ends.
        helper = threading.Thread(target=make, name="colab-guard-netns", daemon=True)
        helper.start()
        helper.join(5)
        result = made[0] if made else OSError("timed out joining the namespace")
        if isinstance(result, OSError):
            dumper = cls(None)
            dumper.broken = f"cannot enter the network namespace of process {pid}: {result}"
            return dumper
        return cls(result)

    def dump(self) -> dict[int, TcpInfo]:
        """socket inode -> counters of every ESTABLISHED or SYN_SENT TCP socket (IPv4
        and IPv6); empty, with ``broken`` set, where the kernel refuses."""
        if self.broken is not None:
            return {}
        try:
            if self._sock is None:
                self._sock = _netlink()
            found: dict[int, TcpInfo] = {}
            for family in (socket.AF_INET, socket.AF_INET6):
                self._dump_family(family, found)
            return found
        except OSError as err:
            self.broken = f"sock_diag dump refused: {err}"
            return {}

    def lookup(self, conns) -> dict[int, TcpInfo]:
        """The counters of a few connections, each asked for by its addresses (``conns``:
        (inode, model.Socket) pairs): a dump walks the kernel's whole connection table
        (about 9 ms here however few sockets there are), a lookup finds one in microseconds."""
        if self.broken is not None:
            return {}
        found: dict[int, TcpInfo] = {}
        try:
            if self._sock is None:
                self._sock = _netlink()
            for inode, sock in conns:
                for family, local, remote in _addresses(sock):
                    if self._lookup_one(family, local, sock.local_port, remote,
                                        sock.remote_port, found) == inode:
                        break
        except OSError as err:
            self.broken = f"sock_diag lookup refused: {err}"
        return found

    def _lookup_one(self, family: int, local: bytes, lport: int, remote: bytes, rport: int,
                    found: dict[int, TcpInfo]) -> int | None:
        self._seq += 1
        sockid = struct.pack("!HH16s16s", lport, rport, local.ljust(16, b"\0"),
                             remote.ljust(16, b"\0")) + struct.pack("=III", 0, NO_COOKIE, NO_COOKIE)
        request = _REQUEST.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0,
                                STATES, sockid)
        self._sock.send(_HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY,
                                     NLM_F_REQUEST, self._seq, 0) + request)
        while True:
            data = self._sock.recv(65536)
            length, kind, _, seq, _ = _HEADER.unpack_from(data, 0)
            if seq != self._seq:
                continue  # a late answer to an earlier question
            if kind in (NLMSG_ERROR, NLMSG_DONE):
                return None  # not found (closed meanwhile, or the other family)
            before = set(found)
            _parse(data, _HEADER.size, length, found)
            new = set(found) - before
            return new.pop() if new else None

    def inodes(self) -> set[int] | None:
        """The inodes of every TCP and UDP socket of the namespace, in any state (IPv4 and
        IPv6), and of its Unix and netlink sockets where the kernel lists them; None where
        it refuses the first. A socket a process holds that is not among them was never
        connected or bound, or its attempt failed (a refused connect): not the socketpair
        of an event loop (a Jupyter server's, a kernel's), nor a DNS lookup's netlink."""
        if self.broken is not None:
            return None
        found: set[int] = set()
        try:
            if self._sock is None:
                self._sock = _netlink()
            for protocol in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                for family in (socket.AF_INET, socket.AF_INET6):
                    self._dump_family(family, found, protocol, ALL_STATES, ext=0)
        except OSError as err:
            self.broken = f"sock_diag dump refused: {err}"
            return None
        for request, inode_at in (
                (_UNIX_REQUEST.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, 0, NO_COOKIE,
                                    NO_COOKIE), _UNIX_INODE_AT),
                (_NETLINK_REQUEST.pack(socket.AF_NETLINK, NDIAG_PROTO_ALL, 0, 0, 0, NO_COOKIE,
                                       NO_COOKIE), _NETLINK_INODE_AT)):
            try:  # a kernel without unix_diag or netlink_diag: those count as unlisted
                self._dump(request, found, inode_at)
            except OSError:
                continue
        return found

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def _dump_family(self, family: int, found, protocol: int = socket.IPPROTO_TCP,
                     states: int = STATES, ext: int = 1 << (INET_DIAG_INFO - 1)) -> None:
        """Dump one family's sockets into ``found``: a dict of TcpInfo by inode, or (with
        ``ext`` 0, no tcp_info asked) a set of inodes."""
        request = _REQUEST.pack(family, protocol, ext, 0, states, b"\0" * 48)
        self._dump(request, found, _INET_INODE_AT)

    def _dump(self, request: bytes, found, inode_at: int) -> None:
        """One dump; each answer's inode (at ``inode_at``) into the set ``found``, or each
        inet answer parsed into the dict ``found``."""
        self._seq += 1
        self._sock.send(_HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY,
                                     NLM_F_REQUEST_DUMP, self._seq, 0) + request)
        while True:
            data = self._sock.recv(1 << 20)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    return
                if seq == self._seq:
                    if kind == NLMSG_DONE:
                        return
                    if kind == NLMSG_ERROR:
                        error = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                        raise OSError(error, os.strerror(error))
                    if isinstance(found, set):
                        found.add(struct.unpack_from("=I", data,
                                                     offset + _HEADER.size + inode_at)[0])
                    else:
                        _parse(data, offset + _HEADER.size, offset + length, found)
                offset += (length + 3) & ~3


def _addresses(sock) -> list[tuple[int, bytes, bytes]]:
    """(family, local, remote) to ask for a connection by: an IPv4 connection may be held by
    an IPv6 socket (its addresses ::ffff:-mapped, normalised away in the model)."""
    if ":" in sock.local_ip:
        return [(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, sock.local_ip),
                 socket.inet_pton(socket.AF_INET6, sock.remote_ip))]
    v4 = (socket.inet_pton(socket.AF_INET, sock.local_ip),
          socket.inet_pton(socket.AF_INET, sock.remote_ip))
    mapped = tuple(b"\0" * 10 + b"\xff\xff" + a for a in v4)
    return [(socket.AF_INET, *v4), (socket.AF_INET6, *mapped)]


def _netlink() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    sock.settimeout(2)
    return sock


def _parse(data: bytes, start: int, end: int, found: dict[int, TcpInfo]) -> None:
    """One inet_diag_msg (72 bytes: family, state, timer, retrans, the socket id, expires,
    queues, uid, inode) and its attributes."""
    state = data[start + 1]
    inode = struct.unpack_from("=I", data, start + 68)[0]
    attr = start + 72
    while attr + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, attr)
        if length < _ATTR.size:
            return
        if kind == INET_DIAG_INFO and length - _ATTR.size >= _SEGS_AT + _SEGS.size:
            info = attr + _ATTR.size
            since_sent, _, since_received, _ = _LAST.unpack_from(data, info + _LAST_AT)
            sent, received = _BYTES.unpack_from(data, info + _BYTES_AT)
            segs_in, segs_out = _SEGS.unpack_from(data, info + _SEGS_AT)
            found[inode] = TcpInfo(state, sent, received, segs_in + segs_out,
                                   since_sent, since_received)
        attr += (length + 3) & ~3

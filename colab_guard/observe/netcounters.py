"""Refused connection attempts, counted by the kernel per network namespace.

A scanner whose attempts are refused at once (loopback, a host that resets) holds each socket
for microseconds: no sample of the socket tables ever sees one. The kernel counts them all the
same, per network namespace, in ``/proc/PID/net/snmp`` and ``snmp6`` (no privilege needed for
a process one may read):

- ``Tcp: AttemptFails``: connections that went from SYN_SENT (or SYN_RECV) straight to CLOSED:
  refused by a reset, or given up. One per refused ``connect()``, IPv4 and IPv6 alike (the TCP
  counters are shared by both families).
- ``Icmp: InDestUnreachs`` and ``Icmp6InDestUnreachs``: "port unreachable" and its kin
  received, which is how a UDP probe of a closed port is refused.

The counters belong to the namespace, not to a process: who caused them is worked out in
behaviour.py (the one kernel whose processes churn sockets while they climb).
"""

from __future__ import annotations

MAX_READ = 65536


def refused_attempts(pid: int | None) -> int | None:
    """Refused connection attempts counted in the network namespace of process ``pid`` (None:
    the guard's own) since it was made; None if the counters cannot be read. About 0.3 ms
    (the kernel formats both files at each read): read only where a process ran."""
    base = "/proc/self/net" if pid is None else f"/proc/{pid}/net"
    try:
        snmp = _read(f"{base}/snmp")
    except OSError:
        return None
    total = _counter(snmp, b"\nTcp:", b"AttemptFails") + _counter(snmp, b"\nIcmp:", b"InDestUnreachs")
    try:
        snmp6 = _read(f"{base}/snmp6")
    except OSError:
        return total  # no IPv6 in that namespace
    at = snmp6.find(b"\nIcmp6InDestUnreachs")
    if at >= 0:
        total += _number(snmp6[at:].split(None, 2)[1])
    return total


def _read(path: str) -> bytes:
    with open(path, "rb") as table:
        return b"\n" + table.read(MAX_READ)


def _counter(snmp: bytes, section: bytes, name: bytes) -> int:
    """One counter of /proc/net/snmp: a section's names on one line, its values on the next."""
    at = snmp.find(section)
    if at < 0:
        return 0
    lines = snmp[at + 1:].split(b"\n", 2)
    if len(lines) < 2:
        return 0
    names, values = lines[0].split(), lines[1].split()
    try:
        return _number(values[names.index(name)])
    except (ValueError, IndexError):
        return 0


def _number(word: bytes) -> int:
    try:
        return max(int(word), 0)
    except ValueError:
        return 0

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

#: (file, section, counter) summed as "refused attempts"
REFUSED = (("snmp", "Tcp", "AttemptFails"), ("snmp", "Icmp", "InDestUnreachs"),
           ("snmp6", "", "Icmp6InDestUnreachs"))
MAX_READ = 65536


def refused_attempts(pid: int | None) -> int | None:
    """Refused connection attempts counted in the network namespace of process ``pid`` (None:
    the guard's own) since it was made; None if the counters cannot be read."""
    base = "/proc/self/net" if pid is None else f"/proc/{pid}/net"
    tables: dict[str, dict[str, dict[str, int]]] = {}
    total = 0
    for name, section, counter in REFUSED:
        if name not in tables:
            try:
                with open(f"{base}/{name}", "rb") as table:
                    text = table.read(MAX_READ).decode("ascii", "replace")
            except OSError:
                if name == "snmp":
                    return None
                text = ""  # no IPv6 in that namespace
            tables[name] = _parse(text, name == "snmp6")
        total += tables[name].get(section, {}).get(counter, 0)
    return total


def _parse(text: str, flat: bool) -> dict[str, dict[str, int]]:
    """snmp: pairs of lines, a header of names then their values, each led by 'Section:';
    snmp6: one 'Name value' a line (returned under section '')."""
    found: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    if flat:
        found[""] = {}
        for line in lines:
            words = line.split()
            if len(words) == 2 and words[1].lstrip("-").isdigit():
                found[""][words[0]] = int(words[1])
        return found
    for header, values in zip(lines[::2], lines[1::2]):
        names, numbers = header.split(), values.split()
        if not names or not numbers or names[0] != numbers[0]:
            continue
        section = names[0].rstrip(":")
        found[section] = {n: int(v) for n, v in zip(names[1:], numbers[1:])
                          if v.lstrip("-").isdigit()}
    return found

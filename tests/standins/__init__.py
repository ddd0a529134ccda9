"""Stand-ins for abusive programs: they look like the real thing from outside
(command line, sockets, CPU) and talk only to loopback services."""

"""Stand-in for an attack on the engine's time: a process that rewrites its own argument area
(through /proc/self/mem, as a native program would with its argv) with text crafted to make a
backtracking regex slow, and changes it every ``--every`` seconds so that every rule reading
the command line is tested again at every tick.

    argv_flipper.py UNIT BYTES EVERY PADDING...

The argument area (PADDING, given long enough by the caller) is filled with UNIT repeated to
BYTES bytes (UNIT, a space, UNIT...), words separated by NULs, the last byte flipping between two values.
"""

import os
import sys
import time


def main() -> None:
    unit, size, every = sys.argv[1].encode() + b" ", int(sys.argv[2]), float(sys.argv[3])
    fields = open("/proc/self/stat", "rb").read().rsplit(b")", 1)[1].split()
    arg_start, arg_end = int(fields[45]), int(fields[46])  # fields 48 and 49 of stat
    size = min(size, arg_end - arg_start - 2)
    text = (unit * (size // len(unit) + 1))[:size].replace(b" ", b"\0")
    variants = [text + b"a\0", text + b"b\0"]
    fd = os.open("/proc/self/mem", os.O_RDWR)
    i = 0
    while True:
        os.pwrite(fd, variants[i % 2], arg_start)
        i += 1
        time.sleep(every)


if __name__ == "__main__":
    main()

"""A kernel stand-in: CHILDREN idle children (sleep), then idle itself, waking once a second as
an idle ipykernel does (its parent poller), to look for a command from the benchmark
(WORLD/out/<kernel id>.cmd, JSON): it runs task.py with it, as a cell would start a program.
Interrupts (SIGINT, the watcher's answer to an offence) are noted and survived.

    python3 kernel.py -f RUNTIME/kernel-<id>.json CHILDREN WORLD
"""

import os
import signal
import subprocess
import sys
import time

children, world = int(sys.argv[3]), sys.argv[4]
kernel_id = os.environ["COLAB_GUARD_KERNEL_ID"]
signal.signal(signal.SIGINT, lambda *_: None)
idle = [subprocess.Popen(["sleep", "86399"]) for _ in range(children)]
command = os.path.join(world, "out", f"{kernel_id}.cmd")
while True:
    time.sleep(1.0)
    if os.path.exists(command):
        taken = command + ".taken"
        os.rename(command, taken)
        subprocess.Popen([sys.executable, os.path.join(world, "task.py"), taken])

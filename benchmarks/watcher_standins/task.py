"""What a cell runs, for the benchmark: execs at a rate, a busy loop, or latency trials.

    python3 task.py COMMAND_FILE      (JSON: {"task": ..., ...})

- {"task": "execs", "rate": R, "seconds": S}: R programs (/bin/true) a second.
- {"task": "busy", "duty": D, "seconds": S}: about D of one core, pure computation.
- {"task": "latency", "argv": [...], "runs": N, "pause": P, "out": FILE}: N times, a child
  notes the time (CLOCK_MONOTONIC) just before it execs ``argv``; this process notes when it
  reaps the child; one line per run to FILE: "<exec to death, s> <how it ended>".
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kernel's interrupts are not for us
command = json.loads(open(sys.argv[1]).read())
task = command["task"]
if task == "execs":
    gap, end = 1.0 / command["rate"], time.monotonic() + command["seconds"]
    next_at = time.monotonic()
    while next_at < end:
        subprocess.run(["/bin/true"])
        next_at += gap
        time.sleep(max(0.0, next_at - time.monotonic()))
elif task == "busy":
    end, duty, x = time.monotonic() + command["seconds"], command["duty"], 1
    while time.monotonic() < end:
        until = time.monotonic() + 0.05 * duty
        while time.monotonic() < until:
            x = (x * 7919 + 13) % 1000003
        time.sleep(0.05 * (1 - duty))
elif task == "latency":
    with open(command["out"], "w") as out:
        for _ in range(command["runs"]):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                os.write(write, repr(time.monotonic()).encode())
                os.execv(command["argv"][0], command["argv"])
            os.close(write)
            timed_out = []
            timer = threading.Timer(command.get("timeout", 10.0),
                                    lambda: timed_out.append(os.kill(pid, signal.SIGKILL)))
            timer.start()
            _, status = os.waitpid(pid, 0)
            died = time.monotonic()
            timer.cancel()
            exec_at = float(os.read(read, 64))
            os.close(read)
            how = "not-stopped" if timed_out else f"signal-{os.WTERMSIG(status)}" \
                if os.WIFSIGNALED(status) else f"exit-{os.WEXITSTATUS(status)}"
            out.write(f"{died - exec_at:.6f} {how}\n")
            out.flush()
            time.sleep(command["pause"])

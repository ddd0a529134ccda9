"""Stand-in for roop's run.py (a face-swap tool; not packaged anywhere): its command line,
its swap model opened, and frame processing that uses some CPU."""

import hashlib
import sys
import time
from pathlib import Path

args = sys.argv[1:]
models = Path(args[args.index("--models") + 1]) if "--models" in args else None
held = open(models / "inswapper_128.onnx", "rb") if models else None  # noqa: SIM115
end = time.monotonic() + 60
frame = b"\0" * 4096
while time.monotonic() < end:
    frame = hashlib.sha1(frame).digest() * 200
    time.sleep(0.01)

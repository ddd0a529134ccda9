"""Opens the model files it is given (face-swap or face-detection ONNX models) and holds
them open while it "processes frames", as an inference tool does."""

import sys
import time

held = [open(path, "rb") for path in sys.argv[1:]]  # noqa: SIM115
end = time.monotonic() + 12
while time.monotonic() < end:
    for f in held:
        f.seek(0)
        f.read(1024)
    time.sleep(0.05)

"""A real GPU workload without PyTorch or a CUDA toolkit: the CUDA driver API through ctypes.

    python cuda_spin.py [--mib 512] [--seconds 20] [--device 0]

Holds ``--mib`` MiB of device memory (written once, so it is really backed) and keeps the SMs
busy with a small spinning kernel written in PTX, which the driver compiles itself (no nvcc).
Prints one JSON line when the memory is held and the first kernel has run
(``{"ready": true, "pid": ..., "kernel_ms": ...}``), then spins until ``--seconds`` are over.
Exits 2 with a JSON line saying why where there is no libcuda or no GPU.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time

PTX = rb"""
.version 7.0
.target sm_70
.address_size 64

.visible .entry spin(.param .u64 spin_out, .param .u32 spin_iters)
{
    .reg .pred %p<2>;
    .reg .b32 %r<7>;
    .reg .f32 %f<3>;
    .reg .b64 %rd<4>;

    ld.param.u64 %rd1, [spin_out];
    ld.param.u32 %r1, [spin_iters];
    mov.u32 %r2, %tid.x;
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mad.lo.s32 %r5, %r3, %r4, %r2;
    cvt.rn.f32.s32 %f1, %r5;
    mov.f32 %f2, 0f3F800000;
    mov.u32 %r6, 0;
SPIN_LOOP:
    fma.rn.f32 %f2, %f2, 0f3F7FFFFF, %f1;
    add.u32 %r6, %r6, 1;
    setp.lt.u32 %p1, %r6, %r1;
    @%p1 bra SPIN_LOOP;
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.s32 %rd3, %r5, 4;
    add.s64 %rd2, %rd2, %rd3;
    st.global.f32 [%rd2], %f2;
    ret;
}
"""

BLOCKS, THREADS = 1024, 256


class CudaError(RuntimeError):
    pass


def load_cuda():
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return ctypes.CDLL("libcuda.so")


def checker(cuda):
    def check(rc: int, what: str) -> None:
        if rc != 0:
            name = ctypes.c_char_p()
            cuda.cuGetErrorName(rc, ctypes.byref(name))
            raise CudaError(f"{what}: {rc} {(name.value or b'?').decode()}")
    return check


def run(mib: int, seconds: float, device: int, iters: int) -> None:
    cuda = load_cuda()
    check = checker(cuda)
    cuda.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    cuda.cuMemsetD8_v2.argtypes = [ctypes.c_uint64, ctypes.c_ubyte, ctypes.c_size_t]
    cuda.cuModuleLoadData.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p]
    cuda.cuModuleGetFunction.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                         ctypes.c_char_p]
    cuda.cuLaunchKernel.argtypes = ([ctypes.c_void_p] + [ctypes.c_uint] * 7
                                    + [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                       ctypes.POINTER(ctypes.c_void_p)])
    cuda.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]

    check(cuda.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    size = mib * 2**20
    buffer = ctypes.c_uint64()
    check(cuda.cuMemAlloc_v2(ctypes.byref(buffer), size), "cuMemAlloc")
    check(cuda.cuMemsetD8_v2(buffer, 0, size), "cuMemsetD8")
    module = ctypes.c_void_p()
    check(cuda.cuModuleLoadData(ctypes.byref(module), PTX), "cuModuleLoadData (PTX JIT)")
    function = ctypes.c_void_p()
    check(cuda.cuModuleGetFunction(ctypes.byref(function), module, b"spin"), "cuModuleGetFunction")
    out, count = ctypes.c_uint64(buffer.value), ctypes.c_uint32(iters)
    params = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.pointer(out), ctypes.c_void_p),
                                   ctypes.cast(ctypes.pointer(count), ctypes.c_void_p))

    def launch() -> float:
        started = time.perf_counter()
        check(cuda.cuLaunchKernel(function, BLOCKS, 1, 1, THREADS, 1, 1, 0, None, params, None),
              "cuLaunchKernel")
        check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        return time.perf_counter() - started

    deadline = time.monotonic() + seconds
    first = launch()
    print(json.dumps({"ready": True, "pid": os.getpid(), "mib": mib,
                      "kernel_ms": round(first * 1000, 2)}), flush=True)
    launches = 1
    while time.monotonic() < deadline:
        launch()
        launches += 1
    print(json.dumps({"done": True, "launches": launches}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--iters", type=int, default=1 << 20)
    args = parser.parse_args()
    try:
        run(args.mib, args.seconds, args.device, args.iters)
    except (OSError, AttributeError, CudaError) as err:
        print(json.dumps({"ready": False, "error": f"{type(err).__name__}: {err}"}), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

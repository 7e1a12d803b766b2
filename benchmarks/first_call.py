"""One-time cost of the compiled KAN kernels: the first forward+backward of a default layer vs the next one.

    .venv/bin/python benchmarks/first_call.py [--cold] [--threads 2] [--rows 1024] [--width 192]

Each layer kind runs in a fresh process (a process compiles each kernel variant once). --cold points
inductor at an empty cache directory, as on a new machine; without it inductor's on-disk cache from earlier
runs is used, as on a user's second run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(kind: str, compile_flag: str, rows: int, width: int, threads: int) -> dict:
    import torch

    from kanvision.layers import BSplineKAN, RSWAFKAN

    torch.set_num_threads(threads)
    compile = {"default": None, "off": False}[compile_flag]
    layer = (BSplineKAN if kind == "bspline" else RSWAFKAN)(width, width, compile=compile)
    x = torch.rand(rows, width, requires_grad=True)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        layer(x).sum().backward()
        times.append(time.perf_counter() - t0)
    return {"first_s": times[0], "next_ms": min(times[1:]) * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="empty inductor cache (a new machine)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.rows, args.width, args.threads)))
        return 0
    env = dict(os.environ)
    cache = tempfile.mkdtemp(prefix="inductor-cold-") if args.cold else None
    if cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    import torch
    print(f"# first call of default KAN layers ({args.width} -> {args.width}, {args.rows} rows, fwd+bwd)\n")
    print(f"- command: `python benchmarks/first_call.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    print(f"- torch {torch.__version__}; {args.threads} threads; each row a fresh process; inductor cache: "
          f"{'empty (' + cache + ')' if cache else 'as left by earlier runs'}\n")
    print("| layer | kernels | first fwd+bwd s | next fwd+bwd ms |\n|---|---|---:|---:|")
    for kind in ("bspline", "rswaf"):
        for flag in ("off", "default"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, flag, "--rows", str(args.rows),
                                  "--width", str(args.width), "--threads", str(args.threads)],
                                 env=env, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = "eager (compile=False)" if flag == "off" else "compiled (default)"
            print(f"| {kind} | {label} | {r['first_s']:.2f} | {r['next_ms']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

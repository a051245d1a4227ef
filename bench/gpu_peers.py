"""python -m bench.gpu_peers [--device cuda] [--numel N] [--optimizers ...] [--repeats N] [--out DIR] [--no-compile]

The short GPU check .ci/gpu runs on a lent GPU, folded into the main benchmark: it is
`python -m bench --cases large --sizes N --dtype fp32` (one fp32 tensor of N elements; 1G by
default on CUDA, capped to what the free memory holds, 4M on a CPU) for a few optimizers,
with every peer of the main benchmark: the device-to-device copy yardstick, torch.optim
AdamW fused/foreach, torch.compile of our reference step, the authors' loops and our
backends that serve the device. It writes results.json (and results.png) under --out.
"""
import argparse
import sys
from pathlib import Path

from .__main__ import EXIT_STATUS
from .__main__ import main as bench_main


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None,
                        help="cpu or cuda[:N] (default: cuda when torch sees a GPU, decided after parsing)")
    parser.add_argument("--numel", type=float, default=None, help="elements (default 1e9 on cuda, 4e6 on cpu)")
    parser.add_argument("--optimizers", default="AdamW,Adai,AdaMomentum,DualAdam")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    numel = int(args.numel or (1 << 30 if torch.device(device).type == "cuda" else 1 << 22))
    argv = ["--device", device, "--cases", "large", "--sizes", str(numel), "--dtype", "fp32",
            "--state-dtype", "fp32", "--optimizers", args.optimizers, "--repeats", str(args.repeats),
            "--out", str(args.out)]
    return bench_main(argv + (["--no-compile"] if args.no_compile else []))


if __name__ == "__main__":
    sys.exit(EXIT_STATUS.get(main()["interrupted"], 0))

"""python -m bench: every optimizer x backend x dtype x case against its peers, in one run, on
the device at hand (see bench/README.md). The command line is read before torch is imported,
so --help and usage errors answer at once."""
import sys
import time

from .cli import parse_args

EXIT_STATUS = {"Ctrl-C": 130, "SIGTERM": 143}  # the shell's codes for a run ended by those signals


def main(argv=None) -> dict:
    started = time.perf_counter()  # --time-limit counts the imports too: on a busy machine they take seconds
    args = parse_args(argv)
    from .cli import resolve
    from .run import run  # torch and fused_optim: only once the command line is known to be good

    return run(resolve(args), started)


if __name__ == "__main__":
    sys.exit(EXIT_STATUS.get(main()["interrupted"], 0))

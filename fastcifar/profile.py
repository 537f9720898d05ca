"""``python -m fastcifar.profile``: profile the training step of several variants side by side.

The command users type; the machinery is :mod:`fastcifar.profiling.record`.
"""

from fastcifar.profiling.record import PROG, main

if __name__ == "__main__":
    from fastcifar.cli import run_cli

    run_cli(main, PROG)

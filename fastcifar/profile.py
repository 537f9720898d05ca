"""``python -m fastcifar.profile``: profile the training step of several variants side by side.

The command users type; the machinery is :mod:`fastcifar.profiling.record`, whose
:func:`~fastcifar.profiling.record.profile_variants` declares the flags.
"""

from fastcifar.profiling.record import PROG, main, profile_variants

if __name__ == "__main__":
    from fastcifar.cli import command, run_cli, signature_flags

    run_cli(
        command(main, flags=signature_flags(profile_variants)[0], summary=__doc__.split("\n\n")[0].split(": ", 1)[1]),
        PROG,
    )

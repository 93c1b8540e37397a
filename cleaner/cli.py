"""``nclean``: the command-line face of the pipelines (kept thin on purpose).

Exit codes: 0 success (some bad samples are fine: they are status rows);
2 configuration error; 3 unreadable input; 4 nothing could be scored;
5 finished, but some shards could not be read at all (named on stderr;
rerun to retry them); 1 unexpected internal error; 130 interrupted.
"""

from __future__ import annotations

import errno
import os
import sys

# Before torch is imported: idle OpenMP threads must sleep, not spin. The
# model's threads otherwise busy-wait on the cores the decode workers need
# (measured: end-to-end embedding 6x slower on 2 cores with the default).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from cleaner.commands.options import DEBUG  # noqa: E402
from cleaner.errors import NcleanError  # noqa: E402

app = typer.Typer(
    name="nclean",
    help=(
        "Score noisy image-text pairs once with a frozen open_clip estimator and write "
        "per-sample verdicts (OSA weights, SDD drop masks, SPS partitions, CLIPCleaner "
        "selections) as Parquet sidecars keyed by (shard, key) and uid.\n\n"
        "Exit codes: 0 ok, 2 bad configuration, 3 unreadable input, 4 nothing scored, "
        "5 some shards unreadable, 1 internal error, 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from cleaner import __version__

        print(f"nclean {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,  # before the command is looked up: `nclean --version` needs none
        help="Print 'nclean <version>' and exit.",
    ),
) -> None:
    # the group's own options; the app's help text comes from typer.Typer(help=...)
    pass


def _register_commands() -> None:
    from cleaner.commands.demo import demo
    from cleaner.commands.embed import embed
    from cleaner.commands.filter import filter_cmd
    from cleaner.commands.report import report_cmd
    from cleaner.commands.score import PanelCommand, score
    from cleaner.commands.train import train

    app.command("score", cls=PanelCommand)(score)
    for name, fn in [
        ("embed", embed),
        ("filter", filter_cmd),
        ("report", report_cmd),
        ("train", train),
        ("demo", demo),
    ]:
        app.command(name)(fn)


_register_commands()


def main() -> None:
    """Console entry point: one-line errors, never a traceback for user errors."""
    try:
        # standalone_mode=False: click returns typer.Exit's code instead of exiting
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except NcleanError as exc:
        print(f"nclean: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("nclean: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in _PATH_ERRNOS or DEBUG["on"]:
            _internal_error(exc)
        # a path the user gave cannot be used (a file where a folder is
        # expected, no permission, read-only): a configuration error
        where = f": {exc.filename}" if exc.filename else ""
        print(f"nclean: error: {exc.strerror or exc}{where}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - last line of defence
        # Usage errors come as click exceptions -- from click itself or from
        # the copy of click that newer typer releases vendor (typer._click),
        # whose classes are not click's: match them by class name.
        kinds = {c.__name__ for c in type(exc).__mro__}
        if "Abort" in kinds:
            print("nclean: interrupted", file=sys.stderr)
            sys.exit(130)
        if "ClickException" in kinds and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        _internal_error(exc)


_PATH_ERRNOS = {
    errno.ENOENT,
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
}


def _internal_error(exc: BaseException) -> None:
    if DEBUG["on"]:
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(
        f"nclean: internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    sys.exit(1)


if __name__ == "__main__":
    main()

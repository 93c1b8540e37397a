"""Command functions kept out of :mod:`cleaner.cli`, one module per command.

Each module exposes a typer command function; ``cleaner.cli`` registers it
(e.g. ``app.command("filter")(filter_cmd)``), so the functions can also be
called directly or mounted on another typer app.
"""

"""Progress bars for every nclean stage: one factory, so all of them behave alike.

On a terminal they are ordinary tqdm bars. When stderr is not a terminal (a
log file, CI, a pipe, ``nohup``), tqdm would still redraw its line up to ten
times a second with a carriage return, and a log then holds thousands of
redraws glued into one huge line. tqdm has no option to drop the carriage
return, so there the bar writes through :class:`LineWriter`, which turns each
redraw into one plain line, and redraws only every :data:`LOG_INTERVAL_S`
seconds; the last state is always written when the bar closes.
"""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm

# Seconds between two progress lines in a log: often enough to see a job is
# alive, rare enough that an hours-long run stays a few hundred lines.
LOG_INTERVAL_S = 10.0


class LineWriter:
    """A file for tqdm that writes each redraw as one newline-terminated line.

    tqdm draws ``"\\r" + status + padding`` and clears with ``"\\r" + spaces``;
    here the carriage returns become line ends, blank pieces (clears) are
    dropped, and a line equal to the previous one is not repeated.
    """

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        for piece in text.replace("\r", "\n").split("\n"):
            line = piece.rstrip()
            if line and line != self.last:
                self.stream.write(line + "\n")
                self.last = line
        return len(text)

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (False when it cannot tell)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def progress_bar(iterable=None, *, file: IO[str] | None = None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on ``file`` (default stderr), in line mode
    when that is not a terminal: a line every :data:`LOG_INTERVAL_S` seconds,
    no carriage returns, plain ASCII, and the final line kept (``leave``)."""
    stream = sys.stderr if file is None else file
    if kwargs.get("disable") or is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.update(
        file=LineWriter(stream),
        mininterval=LOG_INTERVAL_S,
        # the monitor thread forces a line after maxinterval when updates stall
        maxinterval=max(LOG_INTERVAL_S, float(kwargs.get("maxinterval", 0))),
        dynamic_ncols=False,
        ascii=True,
        leave=True,
    )
    return tqdm(iterable, **kwargs)


__all__ = ["LOG_INTERVAL_S", "LineWriter", "is_terminal", "progress_bar"]

"""Open a report page in headless Chromium and say whether its images loaded.

A page can be valid HTML and still show broken images (a wrong ``src``, a
truncated PNG, a data URI that is not a JPEG); only a browser tells. The
report itself stays script-free: :func:`check_page` loads a probe copy of
``index.html`` (in a temporary folder, with a ``<base>`` pointing back at the
report so relative figure paths resolve) that adds one script. After the
``load`` event the script writes, on the root element, how many images there
are, which ones did not load (``complete`` and ``naturalWidth > 0`` is
loaded) and the document's height; Chromium's ``--dump-dom`` prints it.

Run as ``python -m cleaner.report.browser REPORT/index.html`` (the ``make
report-check`` target): prints the result, exits 1 when an image is broken
or the page height is not sane, 2 when Chromium is missing.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cleaner.errors import ConfigError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
MARK = "data-nclean-check"
MAX_HEIGHT = 200_000  # px; a page taller than this has run away (e.g. an unbounded list)
_PROBE = (
    "<script>addEventListener('load',function(){var im=[].slice.call(document.images);"
    "var bad=im.filter(function(i){return !(i.complete&&i.naturalWidth>0)});"
    f"document.documentElement.setAttribute('{MARK}',JSON.stringify({{images:im.length,"
    "broken:bad.map(function(i){return i.alt||i.src.slice(0,80)}),"
    "height:document.documentElement.scrollHeight}))});</script>"
)


class BrowserMissing(ConfigError):
    """No Chromium to run (install Debian's ``chromium``, or set ``CHROMIUM``)."""


def find_chromium() -> str:
    """The browser to run: ``$CHROMIUM``, else the first of :data:`BROWSERS` on the PATH."""
    names = [os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else list(BROWSERS)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserMissing(
        f"no Chromium found (tried {', '.join(names)}): apt-get install -y chromium, "
        "or set CHROMIUM=/path/to/chrome"
    )


def _probe_page(index: Path, folder: Path) -> Path:
    page = index.read_text(encoding="utf-8")
    base = f'<base href="{html.escape(index.parent.resolve().as_uri())}/">'
    page = page.replace("<head>", f"<head>{base}", 1).replace("</body>", f"{_PROBE}</body>", 1)
    probe = folder / "probe.html"
    probe.write_text(page, encoding="utf-8")
    return probe


def check_page(
    index: str | Path, width: int = 1200, height: int = 900, timeout: float = 60
) -> dict:
    """Render ``index`` headless; return ``{"images", "broken", "height"}``.

    Raises :class:`BrowserMissing` without Chromium, RuntimeError when it
    fails or the probe's mark is absent from the page it dumped.
    """
    index = Path(index)
    if not index.is_file():
        raise ConfigError(f"no such page: {index}")
    chromium = find_chromium()
    with tempfile.TemporaryDirectory(prefix="nclean-check-") as tmp:
        probe = _probe_page(index, Path(tmp))
        cmd = [
            chromium,
            *FLAGS,
            f"--user-data-dir={tmp}/profile",
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",  # let the load event and its script run first
            "--dump-dom",
            probe.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    found = re.search(rf'{MARK}="([^"]*)"', proc.stdout)
    if not found:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise RuntimeError(f"chromium exited {proc.returncode} without the page's mark\n{tail}")
    return json.loads(html.unescape(found.group(1)))


def problems(result: dict, min_images: int = 1) -> list[str]:
    """What is wrong with a :func:`check_page` result (empty when the page is fine)."""
    out = []
    if result["images"] < min_images:
        out.append(f"{result['images']} images, expected at least {min_images}")
    if result["broken"]:
        out.append(f"{len(result['broken'])} broken images: {', '.join(result['broken'][:5])}")
    if not 0 < result["height"] <= MAX_HEIGHT:
        out.append(f"page height {result['height']} px is not in (0, {MAX_HEIGHT}]")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cleaner.report.browser REPORT/index.html", file=sys.stderr)
        return 2
    page = Path(args[0])
    page = page / "index.html" if page.is_dir() else page
    try:
        result = check_page(page)
    except (ConfigError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"report check: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    bad = problems(result)
    print(
        f"report check: {page}: {result['images']} images, {len(result['broken'])} broken, "
        f"height {result['height']} px" + (f" -- {'; '.join(bad)}" if bad else " -- ok")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

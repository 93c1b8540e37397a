#!/usr/bin/env bash
# Render an nclean report page (index.html) to a PNG with headless Chromium.
#
# Usage:
#   scripts/report_screenshot.sh REPORT [OUT.png] [WIDTH] [HEIGHT]
#
#   REPORT   index.html, or the report folder holding it (from `nclean report`)
#   OUT.png  where to write the screenshot [default: REPORT_DIR/screenshot.png]
#   WIDTH    window width in pixels  [default: 1200]
#   HEIGHT   window height in pixels [default: 2400]; the page below it is cut off
#
# Why: a quick visual check of a report (layout, figures, tables) on a machine
# without a display, e.g. in CI or over ssh. Needs `chromium` (Debian:
# `apt-get install -y chromium`; set CHROMIUM=/path/to/chrome for another
# build). The page is local and self-contained, so Chromium runs with
# networking side channels off and a throw-away profile that is removed on exit.
# A page made with `nclean report --shards` (pairs as thumbnails) is several
# thousand pixels tall: pass a larger HEIGHT to see it all. For a pass/fail
# check that every image on the page loaded, run
# `python -m cleaner.report.browser REPORT` (or `make report-check`).
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
    exit $(( $# < 1 ? 2 : 0 ))
fi

report="$1"
[[ -d "$report" ]] && report="$report/index.html"
if [[ ! -f "$report" ]]; then
    echo "report_screenshot: no such page: $report" >&2
    exit 2
fi
page="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
out="${2:-$(dirname "$page")/screenshot.png}"
width="${3:-1200}"
height="${4:-2400}"
chromium="${CHROMIUM:-chromium}"
if ! command -v "$chromium" >/dev/null 2>&1; then
    echo "report_screenshot: '$chromium' not found (apt-get install -y chromium, or set CHROMIUM)" >&2
    exit 2
fi

# Absolute output path: Chromium resolves --screenshot against its own cwd.
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT

"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$out_abs" --window-size="${width},${height}" "file://$page" \
    >/dev/null 2>"$profile/chromium.log" || {
    echo "report_screenshot: chromium failed:" >&2
    tail -n 20 "$profile/chromium.log" >&2
    exit 1
}
if [[ ! -s "$out_abs" ]]; then
    echo "report_screenshot: chromium wrote no screenshot" >&2
    tail -n 20 "$profile/chromium.log" >&2
    exit 1
fi
echo "$out_abs"

"""Reports of a sidecar (``nclean report``): an HTML page with figures, or aligned text.

Entry points are in :mod:`cleaner.report.build`; the package is split by
concern (reading, numbers, figures, layouts) so each part stays small.
"""

# How many pairs the page shows per method and group (``--pairs``); here, not
# in pair_select, so that the command line reads them without importing pyarrow.
DEFAULT_PAIRS = 6
MAX_PAIRS = 50  # the page embeds every thumbnail

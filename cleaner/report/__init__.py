"""Reports of a sidecar (``nclean report``): an HTML page with figures, or aligned text.

Entry points are in :mod:`cleaner.report.build`; the package is split by
concern (reading, numbers, figures, layouts) so each part stays small.
"""

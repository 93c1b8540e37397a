"""The methods nclean knows, in their canonical order.

Adding a method: write ``cleaner/methods/<name>/`` (its scorer, its
training-side loss, and ``method.py`` declaring a :class:`Method`), then add
it to ``BUILTIN`` below -- the one registration line. The schema, the CLI
options and the score job read this catalog; nothing else lists methods.
"""

from __future__ import annotations

from cleaner.methods.clipcleaner.method import CLIPCleaner
from cleaner.methods.match.method import Match
from cleaner.methods.osa.method import OSA
from cleaner.methods.registry import Method
from cleaner.methods.sdd.method import SDD
from cleaner.methods.sps.method import SPS

BUILTIN: tuple[Method, ...] = (OSA(), SDD(), SPS(), CLIPCleaner(), Match())

REGISTRY: dict[str, Method] = {m.name: m for m in BUILTIN}


def register(method: Method) -> Method:
    """Add a method at run time (plug-ins, tests); it sorts after the built-ins."""
    if not method.name or method.name in REGISTRY:
        raise ValueError(f"method name {method.name!r} is empty or taken")
    REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    if any(m.name == name for m in BUILTIN):
        raise ValueError(f"{name} is built in")
    REGISTRY.pop(name, None)


def get(name: str) -> Method:
    return REGISTRY[name]


def all_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def default_names() -> tuple[str, ...]:
    return tuple(n for n, m in REGISTRY.items() if m.default)


def parse_methods(text: str | list[str]) -> list[str]:
    """Method names from ``osa,sdd`` or a list, in canonical order (so the
    schema does not depend on how the list was typed)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    methods = [m.strip().lower() for m in items if m.strip()]
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(REGISTRY)}"
        )
    if not methods:
        raise ValueError("no method given")
    return [m for m in REGISTRY if m in methods]


def resolve_options(methods: list[str], given: dict | None) -> dict:
    """The selected methods' options: given values over declared defaults.
    Options of methods that are not selected are dropped (they change
    nothing); a name no method declares is an error."""
    given = dict(given or {})
    declared = {o.name for m in REGISTRY.values() for o in m.options}
    unknown = sorted(set(given) - declared)
    if unknown:
        raise ValueError(f"unknown method option(s): {', '.join(unknown)}")
    return {
        opt.name: given.get(opt.name, opt.default)
        for name in methods
        for opt in REGISTRY[name].options
    }

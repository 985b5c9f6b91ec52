"""The name this project installs under, for every install hint.

The package index's `ten` is an unrelated project (a web exploit framework) that also installs a top-level
`ten` module, so the import name is `temporal_eigenstate_networks` and no message ever says `pip install ten`.
Only the command stays `ten`.
"""

DISTRIBUTION = "temporal-eigenstate-networks"


def install_hint(extra: str | None = None) -> str:
    """The pip command that installs this project, with one of its optional extras."""
    target = DISTRIBUTION if extra is None else f"{DISTRIBUTION}[{extra}]"
    return f"pip install '{target}'"

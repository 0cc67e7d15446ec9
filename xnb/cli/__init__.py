"""The ``xnb`` command line: everything the notebook UI can do.

Flags that configure xnb derive from :class:`~xnb.settings.XnbSettings`
(``--port`` ⇔ ``XNB_PORT``); every command that talks to a cluster takes
``--scheduler`` (``XNB_SCHEDULER_ADDRESS``) and otherwise finds the cluster
running on this machine.  ``xnb local`` starts one.

``base`` holds the group and shared helpers; ``models`` the commands that
manage and use models; ``servers`` the ones that run servers.
"""

from __future__ import annotations

from xnb.cli import (  # noqa: F401  (importing registers the commands)
    bench,  # noqa: F401
    models,
    servers,
)
from xnb.cli.base import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="xnb")

"""Command line entry point. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input."""

from __future__ import annotations

import os
import sys

from ..core.errors import AttattrError
from . import explain_cmd, heads_cmd, models_cmd, tree_cmd, triggers_cmd  # noqa: F401  (register commands)
from .app import app
from .common import err_console


def main() -> None:
    try:
        app()
    except AttattrError as exc:
        err_console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; results written so far are kept")
        sys.exit(130)
    except Exception as exc:  # a runtime failure: one line, the traceback only on request
        if os.environ.get("ATTATTR_DEBUG"):
            raise
        err_console.print(
            f"[red]error:[/red] {type(exc).__name__}: {exc}  (ATTATTR_DEBUG=1 shows the traceback)"
        )
        sys.exit(1)

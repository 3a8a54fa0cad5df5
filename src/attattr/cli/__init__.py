"""Command line entry point. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input."""

from __future__ import annotations

import os
import sys

from rich.markup import escape

from ..core.errors import AttattrError
from . import explain_cmd, heads_cmd, models_cmd, tree_cmd, triggers_cmd  # noqa: F401  (register commands)
from .app import app
from .common import err_console

INTERRUPTED = "interrupted; results written so far are kept"


def main() -> None:
    try:
        app()
    except AttattrError as exc:
        # escaped: a message may hold brackets (`attattr[ray]`, a list) that are not markup
        err_console.print(
            f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except KeyboardInterrupt:  # before a command runs (while importing)
        err_console.print(INTERRUPTED, markup=False, highlight=False)
        sys.exit(130)
    except SystemExit as exc:
        # typer turns Ctrl-C inside a command into a silent exit 130: say what is kept
        if _from_interrupt(exc):
            err_console.print(INTERRUPTED, markup=False, highlight=False)
            sys.exit(130)
        raise
    except Exception as exc:  # a runtime failure: one line, the traceback only on request
        if os.environ.get("ATTATTR_DEBUG"):
            raise
        err_console.print(
            f"[red]error:[/red] {type(exc).__name__}: {exc}  (ATTATTR_DEBUG=1 shows the traceback)"
        )
        sys.exit(1)


def _from_interrupt(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt lies in the chain of exceptions that led to `exc`."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False

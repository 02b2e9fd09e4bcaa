"""Named crash points for fault tests: ``CROSSENC_FAILPOINT=name`` ends the process there.

The commit protocol calls :func:`failpoint` between its steps; a test sets the variable to one
of their names and runs the real command, so the process dies (``os._exit``, no cleanup, as a
killed driver does) exactly at that step. Unset, a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import sys

EXIT_CODE = 86  # what a process ended by a failpoint exits with


def failpoint(name: str) -> None:
    """End the process at once when ``CROSSENC_FAILPOINT`` names this point."""
    if os.environ.get("CROSSENC_FAILPOINT") == name:
        sys.stderr.write(f"crossenc: failpoint {name} reached: exiting\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)

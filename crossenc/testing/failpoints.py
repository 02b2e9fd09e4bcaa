"""Named crash points for fault tests: ``CROSSENC_FAILPOINT=name`` ends the process there.

The commit protocol calls :func:`failpoint` between its steps; a test sets the variable to one
of their names and runs the real command, so the process dies (``os._exit``, no cleanup, as a
killed driver does) exactly at that step. ``CROSSENC_FAILPOINT=name:raise`` raises
:class:`FailpointError` there instead: an unexpected error, as a bug would raise;
``name:enospc`` raises the OSError of a full disk. Unset, a failpoint costs one dictionary
lookup.
"""

from __future__ import annotations

import errno
import os
import sys

EXIT_CODE = 86  # what a process ended by a failpoint exits with


class FailpointError(RuntimeError):
    """Raised at a failpoint set to ``<name>:raise``: stands for an unexpected error."""


def failpoint(name: str) -> None:
    """End the process at once when ``CROSSENC_FAILPOINT`` names this point (raise
    FailpointError when it names ``<name>:raise``, a full disk's OSError for
    ``<name>:enospc``)."""
    value = os.environ.get("CROSSENC_FAILPOINT")
    if value is None:
        return
    if value == f"{name}:raise":
        raise FailpointError(f"failpoint {name} raised (CROSSENC_FAILPOINT={value})")
    if value == f"{name}:enospc":
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (failpoint {name})")
    if value == name:
        sys.stderr.write(f"crossenc: failpoint {name} reached: exiting\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)

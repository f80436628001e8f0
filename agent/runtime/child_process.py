"""What the agent's helper processes (the CPU guard, span workers) take from
it: an environment in which `python -m agent.runtime...` finds this very
package, as the agent may run from a source tree, and the log format."""
from __future__ import annotations

import os
from pathlib import Path

import agent

LOG_FORMAT = "otel-ebpf %(levelname)s %(message)s"
# The directory this package was imported from.
_PACKAGE_ROOT = str(Path(agent.__file__).resolve().parent.parent)


def child_environment() -> dict[str, str]:
    """This process's environment, with the agent's package first on PYTHONPATH."""
    path = os.pathsep.join(filter(None, (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path}

"""Where things live on disk: the repository, the trained toy suite, results and caches.

Every location can be moved with an environment variable, so a user can keep large artefacts elsewhere:
``CIRCUITTRACK_DATA`` (default ``<repo>/data``) holds the toy suite and the results store.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path:
    """The repository checkout that holds ``lib/circuittrack`` (the package is installed editable)."""
    return PACKAGE_DIR.parent.parent


def data_dir() -> Path:
    """Root for generated artefacts (toy suite, results); ``$CIRCUITTRACK_DATA`` overrides it."""
    env = os.environ.get("CIRCUITTRACK_DATA")
    return Path(env).expanduser().resolve() if env else repo_root() / "data"


def toy_suite_dir() -> Path:
    """Trained toy checkpoints: ``<data>/toy_suite/<model>/step<N>/`` (Hugging Face format)."""
    return data_dir() / "toy_suite"


def results_dir() -> Path:
    """The results store used by sweeps and notebooks."""
    return data_dir() / "results"

"""The folder ``modelguard run`` puts first on the child's ``PYTHONPATH``: it holds only the
``sitecustomize`` that installs the guard at interpreter start (:mod:`.sitecustomize`)."""

from __future__ import annotations

import os

DIRECTORY = os.path.dirname(os.path.abspath(__file__))

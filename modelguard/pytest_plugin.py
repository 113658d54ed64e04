"""pytest plugin: ``pytest --modelguard`` runs the test session with the loader guard installed.

Registered through the ``pytest11`` entry point, so pytest imports this module in every
environment where modelguard is installed; it does nothing unless ``--modelguard`` is given,
and until then imports nothing but pytest's own hooks need (not the rest of modelguard).
With ``--modelguard``, every model a test loads through a supported library is verified
before it is built: a load that fails verification raises in the test, so the test fails
with the verification error. A ``modelguard.lock`` found from the working directory upward
(or ``--modelguard-lock FILE``) is enforced. The options mirror ``modelguard run``'s.
"""

from __future__ import annotations

import os

# modelguard.policy's choices, written out so an inactive plugin imports nothing of modelguard
# (tests/test_pytest_plugin.py checks they stay equal).
POLICIES = ("refuse", "repair", "warn")
UNKNOWN_POLICIES = ("warn", "refuse", "allow")
ENV_LOCK = "MODELGUARD_LOCK"

_saved_lock_env: list[str | None] = []


def pytest_addoption(parser) -> None:
    group = parser.getgroup("modelguard", "modelguard: verify every model the tests load")
    group.addoption("--modelguard", action="store_true", default=False,
                    help="install the modelguard loader guard for the test session")
    group.addoption("--modelguard-policy", choices=POLICIES, default=None,
                    help="files that fail verification: refuse (default), repair, warn")
    group.addoption("--modelguard-unknown", choices=UNKNOWN_POLICIES, default=None,
                    help="a model no manifest, lock or cache listing describes: warn (default), refuse, allow")
    group.addoption("--modelguard-offline", action="store_true", default=False,
                    help="never download while guarding (as HF_HUB_OFFLINE=1)")
    group.addoption("--modelguard-lock", metavar="FILE", default=None,
                    help=f"the lock file to enforce (sets ${ENV_LOCK} for the session)")


def pytest_configure(config) -> None:
    if not config.getoption("modelguard"):
        return
    lock = config.getoption("modelguard_lock")
    if lock is not None:
        if not os.path.isfile(lock):
            import pytest

            raise pytest.UsageError(f"--modelguard-lock: lock file {lock} does not exist "
                                    "(create it with `modelguard lock add` or `modelguard lock record -- pytest`)")
        _saved_lock_env.append(os.environ.get(ENV_LOCK))
        os.environ[ENV_LOCK] = os.path.abspath(lock)
    from modelguard import guard  # only when asked: an inactive plugin imports nothing of modelguard

    guard.install(config.getoption("modelguard_policy"), unknown=config.getoption("modelguard_unknown"),
                  offline=True if config.getoption("modelguard_offline") else None)


def pytest_unconfigure(config) -> None:
    if not config.getoption("modelguard"):
        return
    from modelguard import guard

    guard.uninstall()
    if _saved_lock_env:
        previous = _saved_lock_env.pop()
        if previous is None:
            os.environ.pop(ENV_LOCK, None)
        else:
            os.environ[ENV_LOCK] = previous


def pytest_report_header(config) -> str | None:
    if not config.getoption("modelguard"):
        return None
    settings = [f"policy {config.getoption('modelguard_policy') or 'from the environment (default refuse)'}",
                f"unknown models {config.getoption('modelguard_unknown') or 'from the environment (default warn)'}"]
    if config.getoption("modelguard_offline"):
        settings.append("offline")
    if os.environ.get(ENV_LOCK):
        settings.append(f"lock {os.environ[ENV_LOCK]}")
    return "modelguard: loader guard installed for this session (" + ", ".join(settings) + ")"

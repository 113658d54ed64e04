"""Settings read from the environment at call time: is the Hub switched off, where is it, the
names of the signature settings, and the digest cache's switches (``MODELGUARD_NO_CACHE``,
``MODELGUARD_REHASH``: on when set to anything but empty, 0, false, no or off).

One rule for "offline" everywhere (the guard, fetch, build --from-hub): ``HF_HUB_OFFLINE``
or ``TRANSFORMERS_OFFLINE`` set to 1/true/yes/on, in any case.
"""

from __future__ import annotations

import os

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}

# The guard's signature settings (read by modelguard.signing and modelguard.signature_sigstore);
# named here so that a load can tell none is set without importing the signing modules.
ENV_PUBLIC_KEY = "MODELGUARD_PUBLIC_KEY"
ENV_REQUIRE_SIGNATURE = "MODELGUARD_REQUIRE_SIGNATURE"
ENV_IDENTITY = "MODELGUARD_IDENTITY"
ENV_IDENTITY_PROVIDER = "MODELGUARD_IDENTITY_PROVIDER"
SIGNING_VARIABLES = (ENV_PUBLIC_KEY, ENV_REQUIRE_SIGNATURE, ENV_IDENTITY, ENV_IDENTITY_PROVIDER)


# The digest cache's switches (read by modelguard.statcache); named here so that the guard's
# policy reads the rehash switch without importing the cache and the hashing behind it.
ENV_NO_CACHE = "MODELGUARD_NO_CACHE"
ENV_REHASH = "MODELGUARD_REHASH"


def env_flag(name: str) -> bool:
    """Whether ``$name`` is set to anything but empty, 0, false, no or off (any case)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def rehash_by_env() -> bool:
    """Whether ``$MODELGUARD_REHASH`` asks for every file to be hashed in full."""
    return env_flag(ENV_REHASH)


def is_offline() -> bool:
    """True when $HF_HUB_OFFLINE (or $TRANSFORMERS_OFFLINE) switches the Hub off."""
    return any((os.environ.get(var) or "").strip().upper() in _TRUE for var in OFFLINE_VARIABLES)


def hub_endpoint() -> str:
    """The Hub URL, read from $HF_ENDPOINT at call time (default https://huggingface.co)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")

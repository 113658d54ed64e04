"""``import modelguard.auto``: guard every supported model loader from here on.

Equivalent to ``modelguard.install()`` with the settings from the environment
(MODELGUARD_POLICY, MODELGUARD_UNKNOWN, MODELGUARD_MANIFEST_PATH, HF_HUB_OFFLINE).
Imports neither torch nor transformers nor FlagEmbedding.
"""

from .guard import install

install()

"""Version of the Redis data model written by this code base.

``tokenservice init`` records this number in the ``auth_config`` hash (field
``data_model_version``); backups record it in their header and restores refuse
a version this code cannot read unless forced. Bump it whenever the key layout or a
value encoding changes, so an older release (a rollback) is told it does not understand
the data (``tokenservice doctor``) and refuses its backups.

Versions:

1. access tokens indexed by ``a:<sha256 hex>`` members (index sets and
   ``auth_token_cleanup``) plus an ``auth_index_cleanup`` entry each; a stored ``jti``.
2. access tokens indexed by the compact member ``A`` + the raw 32-byte SHA-256, their
   ``auth_token_cleanup`` member being their cleanup entry (no ``auth_index_cleanup``
   entry); the ``jti`` is derived from the digest (a stored one is still read). Version 2
   code reads version 1 data as it is: tokens issued before the upgrade stay valid and
   revocable, and the cleanup job removes their old-form entries, so the migration is
   only recording the new number (``tokenservice init``, run by every deploy).
"""

from __future__ import annotations

DATA_MODEL_VERSION = 2
"""Current data-model version (an integer, incremented on incompatible changes)."""

READABLE_DATA_MODEL_VERSIONS = frozenset({1, 2})
"""Versions whose data this code serves as is (backups of them restore without --force)."""

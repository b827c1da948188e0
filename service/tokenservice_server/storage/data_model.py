"""Version of the Redis data model written by this code base.

``tokenservice init`` records this number in the ``auth_config`` hash (field
``data_model_version``); backups record it in their header and restores refuse
a mismatched version unless forced. Bump it whenever the key layout or a value
encoding changes in a way that needs a migration.
"""

from __future__ import annotations

DATA_MODEL_VERSION = 1
"""Current data-model version (an integer, incremented on incompatible changes)."""

"""A plugin whose dependency is missing: importing it fails, as a half-installed plugin's would."""

from __future__ import annotations

import plait_test_missing_dependency  # noqa: F401  (never installed)

"""Fixtures of the reliability suites (defined in reliability_support, shared with the tests)."""
from reliability_support import _quiet_threads, das_world, raw_root  # noqa: F401  (pytest fixtures)

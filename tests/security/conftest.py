"""The security suite starts real grids with the integration suite's fixtures (same processes,
same shared assets): re-exported here so pytest finds them for tests/security/."""

from tests.integration.conftest import digits, make_grid, make_module_grid, stopper

__all__ = ["digits", "make_grid", "make_module_grid", "stopper"]

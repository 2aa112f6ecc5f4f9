"""Security tests run against real processes, with the integration suite's fixtures."""

from tests.integration.conftest import digits, make_grid, stopper  # noqa: F401

"""The integration fixtures (real grids, real models) for the security tests."""

from tests.integration.conftest import digits, make_grid, stopper  # noqa: F401 - fixtures re-exported

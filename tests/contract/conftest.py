"""The ``sglang`` fixture: SGLang 0.5.23's own argument parser and request models (see sglang_env.py)."""

import pytest

from tests.contract import sglang_env


@pytest.fixture(scope="session")
def sglang() -> sglang_env.Probe:
    """A probe on the cached SGLang environment; a failed build fails the tests, never skips them."""
    try:
        return sglang_env.probe()
    except sglang_env.SGLangEnvError as e:
        failure = str(e)
    pytest.fail(
        f"could not build the SGLang {sglang_env.SGLANG_VERSION} contract environment "
        f"({sglang_env.cache_root() / sglang_env.env_key()}); `make sglang-env` retries:\n{failure}",
        pytrace=False,
    )

"""Shared fixtures: deterministic, order-independent keys per test; strict JAX configuration.

The suite runs as strict users' suites do (JAX's own harness, equinox): implicit rank
promotion raises (`jax_numpy_rank_promotion="raise"`, scoped around every test) and
warnings are errors (`filterwarnings = ["error"]` in pyproject.toml), so jaxcheck must
work under both. Modules in `NOT_YET_STRICT` have not been converted yet (their own test
functions broadcast implicitly, or emit warnings on purpose without a local filter): they
run in JAX's default configuration with warnings shown, until they are converted.
"""

import contextlib
import zlib

import jax
import pytest

NOT_YET_STRICT = frozenset(
    {
        "test_cli.py",
        "test_custom_jvp.py",
        "test_custom_vjp.py",
        "test_demos.py",
        "test_jacobian.py",
        "test_order.py",
        "test_batching.py",
        "test_plot.py",
        "test_probe.py",
        "test_progress.py",
        "test_pytest_plugin.py",
        "test_readme.py",
        "test_real_cases.py",
        "test_real_code.py",
        "test_rules.py",
        "test_suites.py",
    }
)


def _strict(item: pytest.Item) -> bool:
    return item.path.name not in NOT_YET_STRICT


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not _strict(item):
            item.add_marker(pytest.mark.filterwarnings("default"))


@pytest.fixture(autouse=True)
def _strict_jax(request: pytest.FixtureRequest):
    strict = _strict(request.node)
    with jax.numpy_rank_promotion("raise") if strict else contextlib.nullcontext():
        yield


@pytest.fixture
def key(request: pytest.FixtureRequest) -> jax.Array:
    """A PRNG key derived from the test's node id (stable across runs and orderings)."""
    return jax.random.key(zlib.crc32(request.node.nodeid.encode()))

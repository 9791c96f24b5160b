"""Shared fixtures: deterministic, order-independent keys per test; strict JAX configuration.

Strict mode. The suite runs as strict users' suites do (JAX's own harness, equinox), so
jaxcheck must work under both settings below:

- Implicit rank promotion raises: `_strict_jax` wraps every test in
  `jax.numpy_rank_promotion("raise")` (a scoped context, never the global flag), so
  `x @ w + b` with `b` of shape `(n,)` must be written `b[None, :]`, in the tests, in the
  catalogue (`jaxcheck.catalogue`) and in the library alike. The doctests of `jaxcheck/`
  get the same context from the root `conftest.py`.
- Warnings are errors: `filterwarnings = ["error"]` in pyproject.toml's pytest settings. A
  test that provokes a warning on purpose says so locally (`pytest.warns`,
  `warnings.catch_warnings`, or a `pytest.mark.filterwarnings` on that test).

`make test` and `.ci/run` (which runs `make test`) pick both up from here and from
pyproject.toml; no flag is needed. Subprocesses that tests start (the CLI, README console
examples, the multi-device workers) get `JAX_NUMPY_RANK_PROMOTION=raise` and
`PYTHONWARNINGS=error` (`STRICT_ENV`) through the `strict_env` fixture.
"""

import os
import zlib

import jax
import pytest

# What subprocesses that run jaxcheck (the CLI, README console examples) add to their
# environment: strict in the same two ways.
STRICT_ENV = {"JAX_NUMPY_RANK_PROMOTION": "raise", "PYTHONWARNINGS": "error"}


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture
def strict_env() -> dict[str, str]:
    """`os.environ` plus `STRICT_ENV`, for `subprocess.run(..., env=strict_env)`."""
    return {**os.environ, **STRICT_ENV}


@pytest.fixture
def key(request: pytest.FixtureRequest) -> jax.Array:
    """A PRNG key derived from the test's node id (stable across runs and orderings)."""
    return jax.random.key(zlib.crc32(request.node.nodeid.encode()))

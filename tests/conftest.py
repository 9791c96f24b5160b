"""Shared fixtures: deterministic, order-independent keys per test; strict JAX configuration.

The suite runs as strict users' suites do (JAX's own harness, equinox): implicit rank
promotion raises (`jax_numpy_rank_promotion="raise"`) and warnings are errors
(`filterwarnings = ["error"]` in pyproject.toml), so jaxcheck must work under both.
"""

import zlib

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key(request: pytest.FixtureRequest) -> jax.Array:
    """A PRNG key derived from the test's node id (stable across runs and orderings)."""
    return jax.random.key(zlib.crc32(request.node.nodeid.encode()))

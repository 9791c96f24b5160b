"""Shared fixtures: deterministic, order-independent keys per test."""

import zlib

import jax
import pytest


@pytest.fixture
def key(request: pytest.FixtureRequest) -> jax.Array:
    """A PRNG key derived from the test's node id (stable across runs and orderings)."""
    return jax.random.key(zlib.crc32(request.node.nodeid.encode()))

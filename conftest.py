"""Doctests of `jaxcheck/` (`pytest --doctest-modules jaxcheck`): the names examples use,
and the strict configuration the tests run in (tests/conftest.py describes it)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict) -> None:
    doctest_namespace.update(jaxcheck=jaxcheck, jnp=jnp, np=np)


@pytest.fixture(autouse=True)
def _strict_doctests(request: pytest.FixtureRequest):
    """Implicit rank promotion raises in doctests, as in the tests (scoped, never global)."""
    if isinstance(request.node, pytest.DoctestItem):
        with jax.numpy_rank_promotion("raise"):
            yield
    else:
        yield  # tests/conftest.py scopes the tests' configuration

"""Doctest namespace for `pytest --doctest-modules jaxcheck`: examples use jaxcheck, jnp, np."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict) -> None:
    doctest_namespace.update(jaxcheck=jaxcheck, jnp=jnp, np=np)

"""Doctest namespace for `pytest --doctest-modules jaxcheck`: examples use jaxcheck, jnp, np.

Doctests and tests run with implicit rank promotion raising, as strict users' suites do.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict) -> None:
    doctest_namespace.update(jaxcheck=jaxcheck, jnp=jnp, np=np)

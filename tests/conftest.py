import os

import pytest

from ddpmlab.data import load_fashion_mnist


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """No test reads or writes the user's real cache (~/.cache/ddpmlab): evaluation features,
    per-run evaluations and folder caches go to a temporary XDG_CACHE_HOME for the session."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def fmnist_small():
    """A few hundred real FashionMNIST training images."""
    return load_fashion_mnist("train").subset(512)

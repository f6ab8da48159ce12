import pytest

from ddpmlab.data import load_fashion_mnist


@pytest.fixture(scope="session")
def fmnist_small():
    """A few hundred real FashionMNIST training images."""
    return load_fashion_mnist("train").subset(512)

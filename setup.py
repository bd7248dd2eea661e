"""Package discovery only; all metadata lives in pyproject.toml.

setuptools cannot express "find the packages under verifiers/ and install them under
posttrain.verifiers" declaratively, so the list is computed here.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["posttrain", "posttrain.*"]) + [
    "posttrain." + p for p in find_packages(include=["verifiers", "verifiers.*"])
]
setup(packages=packages)

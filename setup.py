"""Maps the card's folders onto two import names; every sub-package is found, none is listed by hand."""

from setuptools import find_packages, setup

ROOTS = {"guestagent": "src", "guestsim": "simulator"}


def _packages() -> list[str]:
    found: list[str] = []
    for name, folder in ROOTS.items():
        found.append(name)
        found.extend(f"{name}.{sub}" for sub in find_packages(where=folder))
    return found


setup(packages=_packages(), package_dir=ROOTS, package_data={"guestsim": ["scenarios/*"]})

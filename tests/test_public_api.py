from __future__ import annotations

import importlib
import importlib.resources
import inspect
import pkgutil

import edgecloud
from edgecloud.backends.base import Backend

CORE_MODULES = ["edgecloud.errors", "edgecloud.repository", "edgecloud.backends"]


def test_all_is_sorted_and_resolves() -> None:
    assert edgecloud.__all__ == sorted(edgecloud.__all__)
    for name in edgecloud.__all__:
        assert hasattr(edgecloud, name), name


def test_all_is_complete_for_core_modules() -> None:
    for module_name in CORE_MODULES:
        module = importlib.import_module(module_name)
        missing = set(module.__all__) - set(edgecloud.__all__)
        assert not missing, f"{module_name} exports {missing} but edgecloud.__all__ lacks them"


def test_every_backend_class_is_public() -> None:
    package = importlib.import_module("edgecloud.backends")
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"edgecloud.backends.{info.name}")
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Backend) and obj.__module__ == module.__name__:
                assert name in edgecloud.__all__


def test_package_ships_type_information() -> None:
    assert (importlib.resources.files("edgecloud") / "py.typed").is_file()

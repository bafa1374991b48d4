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


SUBMODULE_SCRIPT = """
import sys, edgecloud
names = ["errors", "repository", "tensors", "fleet", "io", "backends", "server", "cli"]
assert "edgecloud.errors" not in sys.modules
for name in names:
    module = getattr(edgecloud, name)
    assert module is sys.modules[f"edgecloud.{name}"], name
for missing in ["nosuchmodule", "__wrapped__", "fleet.delta", ""]:
    assert not hasattr(edgecloud, missing), missing
try:
    edgecloud.nosuchmodule
except AttributeError as exc:
    assert "nosuchmodule" in str(exc)
print("SUBMODULES-OK")
"""


def test_submodules_are_attributes_on_demand() -> None:
    """``import edgecloud; edgecloud.errors`` works as with an eager package (a
    fresh process: in this one, other tests have imported the submodules already)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", SUBMODULE_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "SUBMODULES-OK" in result.stdout

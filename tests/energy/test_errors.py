"""The energy package has one error root: every exception it defines is an EnergyError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import energy
from energy import EnergyError, EnergySettingError, create_accountant
from energy.profile import BatchProfileError, check_batch_sizes


def test_every_exception_of_the_package_has_the_one_root() -> None:
    defined = []
    for module_info in pkgutil.iter_modules(energy.__path__, "energy."):
        module = importlib.import_module(module_info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                defined.append(cls)
    names = {cls.__name__ for cls in defined}
    assert names >= {"EnergyError", "EnergySourceUnavailable", "BatchProfileError"}
    assert [cls for cls in defined if not issubclass(cls, EnergyError)] == []


def test_bad_settings_are_energy_errors_and_still_value_errors() -> None:
    with pytest.raises(EnergySettingError, match="unknown energy source 'coal'") as info:
        create_accountant("coal")
    assert isinstance(info.value, ValueError)
    with pytest.raises(BatchProfileError) as profile_info:
        check_batch_sizes([])
    assert isinstance(profile_info.value, EnergyError) and isinstance(profile_info.value, ValueError)

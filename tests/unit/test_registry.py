"""The platform registry: each line matches its transport's PROVIDER (what a platform's
modules import is in tests/integration/test_platform_imports.py)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from guestagent.adapters.platforms.detect import DetectionFailed, detect
from guestagent.adapters.platforms.registry import (
    NAMES,
    PARSERS,
    PROVIDERS,
    TRANSPORTS,
    LazyProvider,
    provider,
)
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec


@pytest.mark.parametrize("entry", PROVIDERS, ids=NAMES)
def test_each_line_says_which_hints_its_provider_has(entry: LazyProvider) -> None:
    spec = importlib.import_module(f"{TRANSPORTS}.{entry.name}").PROVIDER
    assert entry.load() is spec
    assert (entry.has_dmi, entry.has_local, entry.has_probe) == (
        spec.dmi is not None,
        spec.local is not None,
        spec.probe is not None,
    )
    if spec.dmi is not None:
        # The DMI hint is read from the parser module, without the transport.
        assert (
            getattr(importlib.import_module(f"{PARSERS}.{entry.name}"), f"dmi_says_{entry.name}") is spec.dmi
        )


def test_an_unknown_platform_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown platform 'aws'; known: auto, gce, openstack, ec2"):
        provider("aws")


def test_a_line_without_a_hint_offers_none() -> None:
    entry = LazyProvider("vmware", has_dmi=True)
    assert entry.local is None and entry.probe is None
    assert entry.dmi is not None
    assert entry.dmi({"sys_vendor": "VMware, Inc."}) == "DMI sys_vendor is 'VMware, Inc.'"
    assert entry.dmi({"sys_vendor": "QEMU"}) is None


def test_a_module_without_that_platform_s_provider_is_refused() -> None:
    with pytest.raises(ImportError, match=r"polling\.PROVIDER is not the 'polling' ProviderSpec"):
        LazyProvider("polling").load()  # a transport helper module, not a platform


def test_a_platform_that_cannot_be_imported_is_a_failed_hint_and_detection_goes_on(tmp_path: Path) -> None:
    def open_nothing(options: ProviderOptions) -> Any:
        raise AssertionError("detection must not open a provider")

    broken = LazyProvider("nosuch", has_local=True)
    media = ProviderSpec(name="media", open=open_nothing, local=lambda options: "a seed volume")
    found = detect(ProviderOptions(root=str(tmp_path)), (broken, media), timeout=5)
    assert (found.spec, found.reason) == (media, "a seed volume")
    with pytest.raises(
        DetectionFailed, match=r"nosuch: No module named 'guestagent\.adapters\.platforms\.nosuch'"
    ):
        detect(ProviderOptions(root=str(tmp_path)), (broken,), timeout=5)

"""Demo settings: the fleet must include every misbehaving device."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztfm_chain.demo import MIN_DEVICES, ROLES, DemoSettings
from ztfm_chain.exceptions import UsageError


def test_demo_needs_every_misbehaving_device(tmp_path: Path) -> None:
    assert max(ROLES) + 1 == MIN_DEVICES
    with pytest.raises(UsageError, match=f"at least {MIN_DEVICES} devices.*got 12"):
        DemoSettings(tmp_path, tmp_path, devices=12)


def test_demo_accepts_minimum_fleet(tmp_path: Path) -> None:
    settings = DemoSettings(tmp_path, tmp_path, devices=MIN_DEVICES)
    assert settings.devices == MIN_DEVICES

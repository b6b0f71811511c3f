"""A federation on the test chain: a model, devices with digits data, an aggregator."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account.signers.local import LocalAccount

from tests.chain.conftest import new_key
from tests.conftest import Roles
from ztfm_chain.aggregator.daemon import Aggregator, AggregatorSettings
from ztfm_chain.aggregator.journal import Journal
from ztfm_chain.aggregator.rounds import AnomalySettings, RootData
from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.models import (
    AggregationRule,
    ModelParams,
    create_model,
    open_round,
)
from ztfm_chain.device.runtime import DeviceRuntime, TrainingSettings
from ztfm_chain.fl.data import DigitsSplit, dirichlet_split, load_digits_split
from ztfm_chain.fl.models import DIGITS_WIDTHS, init_mlp_state
from ztfm_chain.identity import registrar
from ztfm_chain.storage.embedded import EmbeddedStore
from ztfm_chain.updates import encode_model

MEASUREMENT = hashlib.sha256(b"firmware").digest()


@pytest.fixture(scope="session")
def digits() -> DigitsSplit:
    return load_digits_split(seed=0)


@dataclass
class Federation:
    """Everything one aggregator test needs, on the per-test chain snapshot."""

    system: System
    store: EmbeddedStore
    model_id: int
    devices: list[DeviceRuntime]
    journal_path: Path
    digits: DigitsSplit
    settings: AggregatorSettings
    aggregators: list[Aggregator] = field(default_factory=list)

    def aggregator(self, **overrides: Any) -> Aggregator:
        settings = AggregatorSettings(**{**self.settings.__dict__, **overrides})
        aggregator = Aggregator(
            self.system,
            self.store,
            Roles.aggregator,
            Journal(self.journal_path),
            settings,
        )
        self.aggregators.append(aggregator)
        return aggregator

    def open_round(self) -> int:
        return open_round(self.system, Roles.manager, self.model_id)

    def device(self, index: int) -> DeviceRuntime:
        return self.devices[index]


def make_device(
    system: System,
    store: EmbeddedStore,
    digits: DigitsSplit,
    indices: torch.Tensor,
    seed: int,
    *,
    enrol: bool = True,
    key: LocalAccount | None = None,
) -> DeviceRuntime:
    key = key or new_key()
    if enrol:
        registrar.enrol_device(system, Roles.registrar, key, segment=1)
        registrar.attest_device(
            system, Roles.attestor, key.address, measurement=MEASUREMENT
        )
    return DeviceRuntime(
        system,
        store,
        key,
        digits.pool_x[indices],
        digits.pool_y[indices],
        relayer=Roles.relayer,
        training=TrainingSettings(epochs=1),
        seed=seed,
    )


@pytest.fixture
def federation(
    system: System, tmp_path: Path, digits: DigitsSplit
) -> Iterator[Federation]:
    """Six enrolled devices, a FLTrust model with quorum 3, round 1 not open yet."""
    store = EmbeddedStore(tmp_path / "store")
    base = init_mlp_state(DIGITS_WIDTHS, seed=0)
    base_bytes = encode_model(base)
    base_cid = store.put(base_bytes)
    model_id = create_model(
        system,
        Roles.manager,
        base_model_hash=hashlib.sha256(base_bytes).digest(),
        base_model_cid=base_cid,
        params=ModelParams(
            min_trust=1000,
            quorum=3,
            round_duration=3600,
            max_update_bytes=200_000,
            max_sample_count=1000,
            aggregation_rule=AggregationRule.FLTRUST,
        ),
        segments=[1],
        aggregators=[Roles.aggregator.address],
    )
    splits = dirichlet_split(digits.pool_y, 6, 0.5, seed=1, min_samples=30)
    devices = [
        make_device(system, store, digits, indices, seed=i)
        for i, indices in enumerate(splits)
    ]
    settings = AggregatorSettings(
        models=(model_id,),
        poll_interval=0.05,
        content_grace=0.0,
        root=RootData(digits.root_x, digits.root_y, epochs=1),
        anomaly=AnomalySettings(root_loss=True),
    )
    fed = Federation(
        system, store, model_id, devices, tmp_path / "journal.sqlite", digits, settings
    )
    yield fed
    for aggregator in fed.aggregators:
        aggregator.journal.close()

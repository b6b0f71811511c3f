"""Property-based tests: random action sequences against a model of the contracts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.chain.conftest import BASE_CID, BASE_HASH, advance_time, new_key
from tests.conftest import Roles
from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.models import (
    ModelParams,
    RoundState,
    create_model,
    finalize_round,
    model_info,
    round_info,
)
from ztfm_chain.exceptions import ContractError
from ztfm_chain.identity import registrar
from ztfm_chain.identity.registrar import DeviceStatus

SETTINGS = settings(
    max_examples=12,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Allowed device status changes; anything else must revert and change nothing.
DEVICE_TRANSITIONS = {
    ("suspend", DeviceStatus.ACTIVE): DeviceStatus.SUSPENDED,
    ("reinstate", DeviceStatus.SUSPENDED): DeviceStatus.ACTIVE,
    ("revoke", DeviceStatus.ACTIVE): DeviceStatus.REVOKED,
    ("revoke", DeviceStatus.SUSPENDED): DeviceStatus.REVOKED,
}


class DeviceAndRoundMachine(RuleBasedStateMachine):
    """Drives device status and rounds at random and compares with a model."""

    system: System

    @initialize()
    def start(self) -> None:
        self.snapshot = self.system.client.rpc("evm_snapshot")
        self.device = new_key()
        registrar.enrol_device(self.system, Roles.registrar, self.device)
        self.status = DeviceStatus.ACTIVE
        self.model_id = create_model(
            self.system,
            Roles.manager,
            base_model_hash=BASE_HASH,
            base_model_cid=BASE_CID,
            params=ModelParams(quorum=2, round_duration=100),
            segments=[1],
            aggregators=[Roles.aggregator.address],
        )
        self.round = 0
        self.round_state = RoundState.NONE
        self.global_hash = BASE_HASH

    def teardown(self) -> None:
        if hasattr(self, "snapshot"):
            self.system.client.rpc("evm_revert", [self.snapshot])
            self.system.client.reset_nonces()

    @rule(action=st.sampled_from(["suspend", "reinstate", "revoke"]))
    def change_status(self, action: str) -> None:
        expected = DEVICE_TRANSITIONS.get((action, self.status))
        fn = getattr(self.system.devices.functions, action)(self.device.address)
        if expected is None:
            with pytest.raises(ContractError):
                self.system.client.transact(fn, Roles.registrar)
        else:
            self.system.client.transact(fn, Roles.registrar)
            self.status = expected

    @rule()
    def open_round(self) -> None:
        fn = self.system.models.functions.openRound(self.model_id)
        if self.round_state in (
            RoundState.NONE,
            RoundState.FINALIZED,
            RoundState.FAILED,
        ):
            self.system.client.transact(fn, Roles.manager)
            self.round += 1
            self.round_state = RoundState.OPEN
        else:
            with pytest.raises(ContractError):
                self.system.client.transact(fn, Roles.manager)

    @precondition(lambda self: self.round > 0)
    @rule(accepted=st.integers(min_value=0, max_value=3), wait=st.booleans())
    def finalize(self, accepted: int, wait: bool) -> None:
        if wait:
            advance_time(self.system, 101)
        new_hash = accepted.to_bytes(1, "big") * 32
        call = {
            "new_model_hash": new_hash,
            "new_model_cid": f"bafy-{accepted}",
            "accepted_digest": b"\x00" * 32,
            "accepted_count": accepted,
            "report_hash": b"\x00" * 32,
            "report_cid": "bafy-report",
        }
        can_finalize = self.round_state == RoundState.OPEN and (
            wait or self._deadline_passed()
        )
        if not can_finalize:
            with pytest.raises(ContractError):
                finalize_round(
                    self.system, Roles.aggregator, self.model_id, self.round, **call
                )
            return
        finalize_round(self.system, Roles.aggregator, self.model_id, self.round, **call)
        if accepted >= 2:
            self.round_state = RoundState.FINALIZED
            self.global_hash = new_hash
        else:
            self.round_state = RoundState.FAILED

    def _deadline_passed(self) -> bool:
        deadline = round_info(self.system, self.model_id, self.round).deadline
        latest = self.system.client.w3.eth.get_block("latest")["timestamp"]
        return bool(latest >= deadline)

    @invariant()
    def chain_matches_model(self) -> None:
        if not hasattr(self, "device"):
            return
        record = registrar.device_record(self.system, self.device.address)
        assert record.status is self.status
        info = model_info(self.system, self.model_id)
        assert info.current_round == self.round
        assert info.global_model_hash == self.global_hash
        if self.round:
            assert (
                round_info(self.system, self.model_id, self.round).state
                is self.round_state
            )


def test_device_and_round_state_machine(system: System) -> None:
    DeviceAndRoundMachine.system = system
    DeviceAndRoundMachine.TestCase.settings = SETTINGS
    state_machine_test: Any = DeviceAndRoundMachine.TestCase("runTest")
    state_machine_test.runTest()

"""Fixtures: the test guest Keel boots (built by `cargo test` or testkit) and /dev/kvm."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def guest() -> str:
    path = os.environ.get("KEEL_TEST_GUEST") or str(
        ROOT / "target" / "guest" / "x86_64-unknown-none" / "release" / "keel-test-guest"
    )
    if not Path(path).exists():
        pytest.fail(f"no test guest at {path}: build it with `cargo run --release --example boot` or set KEEL_TEST_GUEST")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.fail("/dev/kvm is not usable")
    return path

"""The Python binding against the real libkeel, booting Keel's test guest on /dev/kvm."""

import ctypes
import os
import threading

import pytest

import keel
from keel._lib import lib

FOREVER = "keel.ticks=0 keel.tick_tsc=2000000 keel.power_button"

CLUSTER = {
    "hosts": [
        {"name": "a", "inventories": {"VCPU": {"total": 8}, "MEMORY_MB": {"total": 16384}}},
        {"name": "b", "inventories": {"VCPU": {"total": 8}, "MEMORY_MB": {"total": 4096}}},
    ]
}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_boot_pause_resume_power_button(guest):
    output = bytearray()
    states = []
    with keel.VmConfig(guest, vcpus=2, memory_mib=128, cmdline="keel.cpus=2 " + FOREVER) as config:
        config.on_console(output.extend)
        with config.build() as vm:
            vm.on_state_change(states.append)
            assert vm.state == keel.State.CREATED
            vm.start()
            vm.pause()
            assert vm.state == keel.State.PAUSED
            vm.resume()
            with pytest.raises(keel.Timeout, match="still runs after 100 ms"):
                vm.wait(timeout=0.1)
            vm.power_button()
            assert vm.wait(timeout=10) == keel.ExitReason.SHUTDOWN
            assert vm.exit_reason == keel.ExitReason.SHUTDOWN
            assert vm.exit_description == "guest shutdown"
            counters = vm.counters()
            assert len(counters["vcpus"]) == 2
    text = output.decode(errors="replace")
    assert "keel-guest: boot protocol" in text and "exit via=s5" in text, text[-300:]
    assert states[:4] == [keel.State.CREATED, keel.State.RUNNING, keel.State.PAUSED, keel.State.RUNNING]
    assert states[-1] == keel.State.EXITED


def test_console_to_a_pipe_and_the_state_fd(guest):
    read_end, write_end = os.pipe()
    with keel.VmConfig(guest, cmdline="keel.exit=reset") as config:
        config.console_to(write_end)
        os.close(write_end)  # Keel writes to its own duplicate
        with config.build() as vm:
            state_fd = vm.state_fd()
            vm.start()
            assert vm.wait(timeout=10) == keel.ExitReason.RESET
            assert len(os.read(state_fd, 8)) == 8, "the state fd turned readable"
            os.close(state_fd)
    output = b""
    while chunk := os.read(read_end, 65536):
        output += chunk
    os.close(read_end)
    assert b"keel-guest: exit via=reset" in output


@pytest.mark.parametrize("seccomp", [True, False])
def test_a_console_callback_runs_under_the_vcpu_filter_unless_it_is_off(guest, seccomp):
    opened = []

    def on_console(_data: bytes) -> None:
        if not opened:
            try:
                with open("/proc/self/status"):
                    opened.append("opened")
            except PermissionError:
                opened.append("refused")

    with keel.VmConfig(guest, cmdline="keel.exit=reset", seccomp=seccomp) as config:
        config.on_console(on_console)
        with config.build() as vm:
            vm.start()
            assert vm.wait(timeout=10) == keel.ExitReason.RESET
    assert opened == ["refused" if seccomp else "opened"]


def test_placement_and_explanations():
    with keel.Cluster(CLUSTER) as cluster, keel.Placer(cluster, policy="pack", seed=42) as placer:
        placement = placer.place({"id": "vm-1", "resources": {"VCPU": 2, "MEMORY_MB": 12288}})
        assert placement["host"] == "a"
        with pytest.raises(keel.Unschedulable) as err:
            placer.decide({"id": "vm-2", "resources": {"MEMORY_MB": 12288}})
        assert "0/2 hosts available" in str(err.value)
        assert err.value.explanation["summary"] == "0/2 hosts available: 2 insufficient MEMORY_MB"
        assert [p["consumer"] for p in placer.placements()] == ["vm-1"]
        placer.release("vm-1")
        assert placer.place({"id": "vm-2", "resources": {"MEMORY_MB": 12288}})["host"] == "a"
    yaml = "hosts:\n- name: y\n  inventories: {VCPU: {total: 2}}\n"
    with keel.Cluster(yaml, format="yaml") as cluster, keel.Placer(cluster) as placer:
        assert placer.place({"id": "x", "resources": {"VCPU": 2}})["host"] == "y"


# Misuse: each gives its exception and the interpreter goes on.

def test_closed_objects_raise(guest):
    config = keel.VmConfig(guest)
    config.close()
    config.close()  # twice is harmless
    with pytest.raises(keel.HandleError):
        config.vcpus = 2
    # Through the C ABI directly: a freed handle is refused, not a crash.
    handle = ctypes.c_uint64()
    assert lib.keel_config_new(guest.encode(), ctypes.byref(handle)) == 0
    assert lib.keel_config_free(handle) == 0
    assert lib.keel_config_free(handle) == 3
    assert b"freed already" in lib.keel_last_error()
    assert lib.keel_vm_start(handle) == 3
    assert b"is a VM config, expected a VM" in lib.keel_last_error()


def test_bad_fields_name_themselves(guest):
    with keel.VmConfig(guest) as config:
        with pytest.raises(keel.InvalidArgument, match="vcpus"):
            config.vcpus = 0
        assert config.vcpus == 1, "a refused value leaves the config as it was"
        with pytest.raises(keel.InvalidArgument, match="guest_cid"):
            config.set_vsock("v", 1, "/tmp/v.sock")
        with pytest.raises(keel.InvalidArgument, match="not an open descriptor"):
            config.add_net_fd("net0", 12345)
        config.add_disk("disk0", "/no/such/image")
        with pytest.raises(keel.InvalidArgument, match="/no/such/image"):
            config.build()
    with pytest.raises(keel.InvalidArgument, match="not a VM config"):
        keel.VmConfig.from_json({"vcpus": "two"})
    with pytest.raises(keel.EncodingError, match="not valid UTF-8"):
        keel.VmConfig(b"/boot/\xff")
    with pytest.raises(keel.NullArgument, match="kernel is NULL"):
        keel._check(lib.keel_config_new(None, ctypes.byref(ctypes.c_uint64())))


def test_wrong_state_and_wrong_thread(guest):
    results = {}

    def console(data: bytes) -> None:
        if "wait" not in results:
            for name, call in (("wait", lambda: vm.wait(timeout=0)), ("pause", vm.pause), ("close", vm.close)):
                try:
                    call()
                    results[name] = None
                except keel.KeelError as err:
                    results[name] = err

    with keel.VmConfig(guest, cmdline=FOREVER) as config:
        config.on_console(console)
        vm = config.build()
        with pytest.raises(keel.StateError, match="cannot pause a VM that is Created"):
            vm.pause()
        with pytest.raises(keel.StateError, match="never started"):
            vm.wait(timeout=1)
        vm.start()
        with pytest.raises(keel.StateError, match="not created"):
            vm.start()
        vm.power_button()
        assert vm.wait(timeout=10) == keel.ExitReason.SHUTDOWN
        with pytest.raises(keel.StateError, match="cannot resume"):
            vm.resume()
    for name in ("wait", "pause"):
        assert isinstance(results[name], keel.ThreadError), results
    # close() from the callback failed, so the handle is still ours to free.
    assert isinstance(results["close"], keel.ThreadError)
    vm.close()
    with pytest.raises(keel.HandleError):
        vm.state


def test_create_and_close_cycles_leave_nothing_behind(guest):
    baseline_handles, baseline_fds = keel.live_handles(), open_fds()
    for _ in range(300):
        with keel.VmConfig(guest, vcpus=2) as config:
            config.add_disk("d", "/tmp/x")
        with keel.Cluster(CLUSTER) as cluster, keel.Placer(cluster) as placer:
            placer.place({"id": "v", "resources": {"VCPU": 1}})
    for _ in range(20):
        with keel.VmConfig(guest, cmdline="keel.exit=reset") as config:
            config.on_console(lambda data: None)
            vm = config.build()
        with vm:
            vm.start()
            vm.wait(timeout=10)
    assert keel.live_handles() == baseline_handles
    assert open_fds() == baseline_fds


def test_calls_from_many_threads(guest):
    with keel.VmConfig(guest, cmdline=FOREVER) as config, config.build() as vm:
        vm.start()
        errors = []

        def hammer():
            for _ in range(50):
                try:
                    vm.state
                    vm.counters()
                except keel.KeelError as err:  # pragma: no cover - reported below
                    errors.append(err)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        vm.stop()
        assert vm.wait(timeout=10) == keel.ExitReason.STOPPED
        assert errors == []

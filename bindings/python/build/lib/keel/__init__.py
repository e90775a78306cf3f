"""Keel from Python: boot and manage VMs on KVM, and decide where they run.

A thin, typed layer over libkeel's C ABI (ctypes). Every failing call raises a
:class:`KeelError` subclass carrying libkeel's message, which names the argument or config
field; objects are context managers that free their handle, and a freed object raises
:class:`HandleError` instead of crashing::

    import keel

    with keel.VmConfig("vmlinux", vcpus=2, memory_mib=256, cmdline="console=ttyS0") as config:
        config.on_console(lambda data: print(data.decode(errors="replace"), end=""))
        with config.build() as vm:
            vm.start()
            print(vm.wait(timeout=30))

The library is found through ``KEEL_LIBRARY``, the repository's ``target/capi`` or the system's
``libkeel.so.0``.
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ._lib import CONSOLE_CB, STATE_CB, c_handle, lib

__all__ = [
    "KeelError", "NullArgument", "EncodingError", "HandleError", "InvalidArgument",
    "StateError", "ThreadError", "Timeout", "HostError", "Unschedulable", "Conflict",
    "BufferTooSmall", "InternalError", "State", "ExitReason", "Transport", "VmConfig", "Vm",
    "Cluster", "Placer", "Claim", "version", "live_handles",
]


class KeelError(Exception):
    """A libkeel call failed; ``status`` is its code and ``str(err)`` its message."""

    status: int = -1

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.status_name = lib.keel_status_name(status).decode()


class NullArgument(KeelError, ValueError):
    """KEEL_ERR_NULL: a required argument was missing."""


class EncodingError(KeelError, ValueError):
    """KEEL_ERR_UTF8: a string was not valid UTF-8."""


class HandleError(KeelError):
    """KEEL_ERR_HANDLE: the object was freed (or is of another kind)."""


class InvalidArgument(KeelError, ValueError):
    """KEEL_ERR_INVALID: a bad value; the message names the field."""


class StateError(KeelError):
    """KEEL_ERR_STATE: not in this state (pausing a VM that is not running)."""


class ThreadError(KeelError):
    """KEEL_ERR_THREAD: a blocking call from inside a Keel callback."""


class Timeout(KeelError, TimeoutError):
    """KEEL_ERR_TIMEOUT: the time ran out."""


class HostError(KeelError, OSError):
    """KEEL_ERR_HOST: the host refused (a file, a TAP device, KVM)."""


class Unschedulable(KeelError):
    """KEEL_ERR_UNSCHEDULABLE: no host fits; ``explanation`` says why."""

    explanation: Optional[dict] = None


class Conflict(KeelError):
    """KEEL_ERR_CONFLICT: another decider changed the state first."""


class BufferTooSmall(KeelError):
    """KEEL_ERR_BUFFER (handled inside the binding)."""


class InternalError(KeelError):
    """KEEL_ERR_INTERNAL: a bug in Keel, contained at the boundary."""


_ERRORS = {
    1: NullArgument, 2: EncodingError, 3: HandleError, 4: InvalidArgument, 5: StateError,
    6: ThreadError, 7: Timeout, 8: HostError, 9: Unschedulable, 10: Conflict,
    11: BufferTooSmall, 12: InternalError,
}


def _check(status: int) -> None:
    if status != 0:
        message = lib.keel_last_error().decode(errors="replace")
        raise _ERRORS.get(status, KeelError)(message, status)


def _text(value: Union[str, os.PathLike]) -> bytes:
    return os.fspath(value).encode() if not isinstance(value, bytes) else value


def _read(function: Callable[..., int], handle: int) -> str:
    """Calls a libkeel function that fills a caller's buffer. The text can grow between the
    sizing call and the filling one (counters move), so a short buffer is retried with the
    length libkeel reports."""
    needed = ctypes.c_size_t(0)
    status = function(handle, None, 0, ctypes.byref(needed))
    while True:
        if status != 11:
            _check(status)
        buffer = ctypes.create_string_buffer(needed.value + 64)
        status = function(handle, buffer, len(buffer), ctypes.byref(needed))
        if status == 0:
            return buffer.value.decode()


def version() -> str:
    """libkeel's version."""
    return lib.keel_version().decode()


def live_handles() -> int:
    """Handles issued by libkeel and not freed (for leak checks)."""
    return int(lib.keel_live_handles())


class State(enum.IntEnum):
    """A VM's lifecycle state."""

    CREATED = 1
    RUNNING = 2
    PAUSED = 3
    EXITED = 4


class ExitReason(enum.IntEnum):
    """Why a VM stopped."""

    RESET = 1
    SHUTDOWN = 2
    STOPPED = 3
    TRIPLE_FAULT = 4
    INTERNAL_ERROR = 5
    ENTRY_FAILED = 6
    FAILED = 7


class Transport(enum.IntEnum):
    """Where virtio devices sit."""

    PCI = 1
    MMIO = 2


class _Handle:
    """An object behind a libkeel handle, freed by ``close()`` or on leaving a ``with``."""

    _free: Callable[[int], int]

    def __init__(self, handle: int) -> None:
        self._handle: Optional[int] = handle

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise HandleError(f"{type(self).__name__} is closed", 3)
        return self._handle

    def close(self) -> None:
        """Frees the object; closing twice is harmless. A close refused by libkeel (from
        inside a callback) leaves the object open."""
        if self._handle is not None:
            status = type(self)._free(self._handle)
            if status in (0, 3):  # freed, or freed already
                self._handle = None
            _check(status)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown, or already reported
            pass


class VmConfig(_Handle):
    """A VM's configuration, checked field by field as it is set.

    ``seccomp=False`` turns Keel's seccomp filters off for the VM's threads. They are on by
    default; a console callback runs on a vCPU thread under its filter, where opening a file
    fails and a system call outside the filter ends the process (exit status 159).
    """

    _free = lib.keel_config_free

    def __init__(
        self,
        kernel: Union[str, os.PathLike],
        *,
        vcpus: Optional[int] = None,
        memory_mib: Optional[int] = None,
        cmdline: Optional[str] = None,
        initrd: Union[str, os.PathLike, None] = None,
        transport: Optional[Transport] = None,
        seccomp: bool = True,
    ) -> None:
        handle = c_handle()
        _check(lib.keel_config_new(_text(kernel), ctypes.byref(handle)))
        super().__init__(handle.value)
        self._console: Any = None
        if vcpus is not None:
            self.vcpus = vcpus
        if memory_mib is not None:
            self.memory_mib = memory_mib
        if cmdline is not None:
            self.cmdline = cmdline
        if initrd is not None:
            self.initrd = initrd
        if transport is not None:
            _check(lib.keel_config_set_transport(self.handle, int(transport)))
        if not seccomp:
            # Keel's filters are on by default; a console callback runs under the vCPU's.
            _check(lib.keel_config_set_seccomp(self.handle, 0))

    @classmethod
    def from_json(cls, document: Union[str, dict]) -> "VmConfig":
        """A config from the JSON form of Keel's ``VmConfig`` (what ``keel --config`` reads)."""
        text = document if isinstance(document, str) else json.dumps(document)
        handle = c_handle()
        _check(lib.keel_config_from_json(text.encode(), ctypes.byref(handle)))
        config = cls.__new__(cls)
        _Handle.__init__(config, handle.value)
        config._console = None
        return config

    def to_dict(self) -> dict:
        """The config as its JSON document."""
        return json.loads(_read(lib.keel_config_to_json, self.handle))

    @property
    def vcpus(self) -> int:
        return int(self.to_dict()["vcpus"])

    @vcpus.setter
    def vcpus(self, value: int) -> None:
        _check(lib.keel_config_set_vcpus(self.handle, value))

    @property
    def memory_mib(self) -> int:
        return int(self.to_dict()["memory"])

    @memory_mib.setter
    def memory_mib(self, value: int) -> None:
        _check(lib.keel_config_set_memory_mib(self.handle, value))

    @property
    def cmdline(self) -> str:
        return str(self.to_dict()["cmdline"])

    @cmdline.setter
    def cmdline(self, value: str) -> None:
        _check(lib.keel_config_set_cmdline(self.handle, value.encode()))

    @property
    def initrd(self) -> Optional[str]:
        return self.to_dict().get("initrd")

    @initrd.setter
    def initrd(self, value: Union[str, os.PathLike, None]) -> None:
        _check(lib.keel_config_set_initrd(self.handle, None if value is None else _text(value)))

    def add_disk(self, id: str, path: Union[str, os.PathLike], *, read_only: bool = False, direct: bool = False) -> None:
        """A virtio-blk disk on a raw image (opened when the VM is built)."""
        _check(lib.keel_config_add_disk(self.handle, id.encode(), _text(path), read_only, direct))

    def add_net_tap(self, id: str, tap: str, mac: Optional[str] = None) -> None:
        """A virtio-net card on the TAP device ``tap``."""
        _check(lib.keel_config_add_net_tap(self.handle, id.encode(), tap.encode(), None if mac is None else mac.encode()))

    def add_net_fd(self, id: str, fd: int, mac: Optional[str] = None) -> None:
        """A virtio-net card on an open TAP descriptor; Keel owns ``fd`` once this returns."""
        _check(lib.keel_config_add_net_fd(self.handle, id.encode(), fd, None if mac is None else mac.encode()))

    def set_vsock(self, id: str, cid: int, socket: Union[str, os.PathLike]) -> None:
        """A vsock device with guest CID ``cid``, host side on the Unix socket ``socket``."""
        _check(lib.keel_config_set_vsock(self.handle, id.encode(), cid, _text(socket)))

    def set_rng(self, id: str = "rng0") -> None:
        """A virtio-rng entropy device."""
        _check(lib.keel_config_set_rng(self.handle, id.encode()))

    def console_to(self, target: Union[int, Any]) -> None:
        """Sends serial output to a descriptor or an object with ``fileno()`` (Keel writes to a
        duplicate; the caller keeps its own)."""
        fd = target if isinstance(target, int) else target.fileno()
        _check(lib.keel_config_set_console_fd(self.handle, fd))
        self._console = None

    def on_console(self, callback: Callable[[bytes], None]) -> None:
        """Calls ``callback(data)`` with serial output, on the VM's vCPU thread. It must not
        wait for, pause or close the VM (that raises :class:`ThreadError`)."""

        def trampoline(user: Any, data: Any, length: int) -> None:
            callback(ctypes.string_at(data, length))

        function = CONSOLE_CB(trampoline)
        _check(lib.keel_config_set_console_callback(self.handle, function, None))
        self._console = function

    def build(self) -> "Vm":
        """Builds the VM (checks the host, maps memory, loads the kernel); not started."""
        handle = c_handle()
        _check(lib.keel_vm_build(self.handle, ctypes.byref(handle)))
        return Vm(handle.value, keep=[self._console])


class Vm(_Handle):
    """A built VM. ``close()`` stops it if it runs and frees it."""

    _free = lib.keel_vm_free

    def __init__(self, handle: int, keep: Optional[list] = None) -> None:
        super().__init__(handle)
        # ctypes callbacks must outlive every call libkeel can make to them.
        self._keep: list = list(keep or [])

    def start(self) -> None:
        _check(lib.keel_vm_start(self.handle))

    def pause(self) -> None:
        _check(lib.keel_vm_pause(self.handle))

    def resume(self) -> None:
        _check(lib.keel_vm_resume(self.handle))

    def stop(self) -> None:
        """Stops the VM now, without waiting."""
        _check(lib.keel_vm_stop(self.handle))

    def power_button(self) -> None:
        """Presses the ACPI power button."""
        _check(lib.keel_vm_power_button(self.handle))

    def wait(self, timeout: Optional[float] = None) -> ExitReason:
        """Waits for the VM to exit; raises :class:`Timeout` after ``timeout`` seconds."""
        milliseconds = 2**64 - 1 if timeout is None else max(0, int(timeout * 1000))
        reason = ctypes.c_int32()
        _check(lib.keel_vm_wait(self.handle, milliseconds, ctypes.byref(reason)))
        return ExitReason(reason.value)

    @property
    def state(self) -> State:
        value = ctypes.c_int32()
        _check(lib.keel_vm_state(self.handle, ctypes.byref(value)))
        return State(value.value)

    @property
    def exit_reason(self) -> Optional[ExitReason]:
        """Why the VM exited, or None while it has not."""
        if self.state != State.EXITED:
            return None
        value = ctypes.c_int32()
        _check(lib.keel_vm_exit_reason(self.handle, ctypes.byref(value)))
        return ExitReason(value.value)

    @property
    def exit_description(self) -> str:
        return _read(lib.keel_vm_describe_exit, self.handle)

    def counters(self) -> dict:
        """vCPU exits by kind and per-device counters."""
        return json.loads(_read(lib.keel_vm_counters_json, self.handle))

    def on_state_change(self, callback: Callable[[State], None]) -> None:
        """Calls ``callback(state)`` on every state change (on the thread that caused it)."""

        def trampoline(user: Any, state: int) -> None:
            callback(State(state))

        function = STATE_CB(trampoline)
        _check(lib.keel_vm_on_state_change(self.handle, function, None))
        self._keep.append(function)

    def state_fd(self) -> int:
        """A descriptor that turns readable on each state change (read 8 bytes to reset it);
        the caller closes it."""
        fd = ctypes.c_int()
        _check(lib.keel_vm_state_fd(self.handle, ctypes.byref(fd)))
        return fd.value


class Cluster(_Handle):
    """A cluster description: hosts with their resource inventories."""

    _free = lib.keel_cluster_free

    def __init__(self, document: Union[str, dict], format: str = "json") -> None:
        codes = {"json": 1, "yaml": 2}
        if format not in codes:
            raise InvalidArgument(f"format: `{format}` is neither json nor yaml", 4)
        text = document if isinstance(document, str) else json.dumps(document)
        handle = c_handle()
        _check(lib.keel_cluster_load(text.encode(), codes[format], ctypes.byref(handle)))
        super().__init__(handle.value)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "Cluster":
        path = Path(path)
        return cls(path.read_text(), "yaml" if path.suffix in (".yaml", ".yml") else "json")


class Placer(_Handle):
    """A cluster's allocations and a decider."""

    _free = lib.keel_placer_free

    def __init__(self, cluster: Cluster, policy: str = "spread", seed: int = 0) -> None:
        handle = c_handle()
        _check(lib.keel_placer_new(cluster.handle, policy.encode(), seed, ctypes.byref(handle)))
        super().__init__(handle.value)

    def decide(self, request: Union[str, dict]) -> "Claim":
        """Where ``request`` goes (not yet committed). Raises :class:`Unschedulable`, with the
        explanation as ``err.explanation``, when nothing fits."""
        text = request if isinstance(request, str) else json.dumps(request)
        handle = c_handle()
        try:
            _check(lib.keel_placer_decide(self.handle, text.encode(), ctypes.byref(handle)))
        except Unschedulable as err:
            err.explanation = self.explain()
            raise
        return Claim(handle.value)

    def place(self, request: Union[str, dict]) -> dict:
        """Decides and commits; returns the placement."""
        with self.decide(request) as claim:
            placement = claim.placement
            claim.commit()
            return placement

    def explain(self) -> dict:
        """Why the last decision found no host."""
        return json.loads(_read(lib.keel_placer_explain, self.handle))

    def release(self, consumer: str) -> None:
        """Frees the committed allocation of ``consumer``."""
        _check(lib.keel_placer_release(self.handle, consumer.encode()))

    def placements(self) -> list:
        """Every committed placement (what to persist)."""
        return json.loads(_read(lib.keel_placer_placements, self.handle))


class Claim(_Handle):
    """A decided placement, to commit or drop."""

    _free = lib.keel_claim_free

    @property
    def placement(self) -> dict:
        return json.loads(_read(lib.keel_claim_placement, self.handle))

    def commit(self) -> None:
        """Books the claim; raises :class:`Conflict` if the state moved under it."""
        _check(lib.keel_claim_commit(self.handle))

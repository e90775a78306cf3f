"""Loading libkeel and declaring its functions for ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Optional

ABI_MAJOR = 0

c_status = ctypes.c_int32
c_handle = ctypes.c_uint64

CONSOLE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t)
STATE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32)


def _candidates() -> list[str]:
    found = []
    explicit = os.environ.get("KEEL_LIBRARY")
    if explicit:
        found.append(explicit)
    # In-tree: the repository's target/capi (bindings/python/keel/_lib.py -> repository root).
    root = Path(__file__).resolve().parents[3]
    found.append(str(root / "target" / "capi" / f"libkeel.so.{ABI_MAJOR}"))
    system = ctypes.util.find_library("keel")
    if system:
        found.append(system)
    found.append(f"libkeel.so.{ABI_MAJOR}")
    return found


def _load() -> ctypes.CDLL:
    errors = []
    for candidate in _candidates():
        try:
            return ctypes.CDLL(candidate)
        except OSError as err:
            errors.append(f"{candidate}: {err}")
    raise ImportError(
        "cannot load libkeel (set KEEL_LIBRARY to its path, or build it with "
        "`cargo build --profile capi -p keel-capi`): " + "; ".join(errors)
    )


lib = _load()

_SIGNATURES: dict[str, tuple[Optional[type], list]] = {
    "keel_abi_version": (ctypes.c_uint32, []),
    "keel_version": (ctypes.c_char_p, []),
    "keel_live_handles": (ctypes.c_uint64, []),
    "keel_last_error": (ctypes.c_char_p, []),
    "keel_status_name": (ctypes.c_char_p, [c_status]),
    "keel_config_new": (c_status, [ctypes.c_char_p, ctypes.POINTER(c_handle)]),
    "keel_config_from_json": (c_status, [ctypes.c_char_p, ctypes.POINTER(c_handle)]),
    "keel_config_to_json": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
    "keel_config_set_vcpus": (c_status, [c_handle, ctypes.c_uint32]),
    "keel_config_set_memory_mib": (c_status, [c_handle, ctypes.c_uint64]),
    "keel_config_set_initrd": (c_status, [c_handle, ctypes.c_char_p]),
    "keel_config_set_cmdline": (c_status, [c_handle, ctypes.c_char_p]),
    "keel_config_set_transport": (c_status, [c_handle, ctypes.c_int32]),
    "keel_config_set_seccomp": (c_status, [c_handle, ctypes.c_int32]),
    "keel_config_add_disk": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]),
    "keel_config_add_net_tap": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]),
    "keel_config_add_net_fd": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]),
    "keel_config_set_vsock": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p]),
    "keel_config_set_rng": (c_status, [c_handle, ctypes.c_char_p]),
    "keel_config_set_console_fd": (c_status, [c_handle, ctypes.c_int]),
    "keel_config_set_console_callback": (c_status, [c_handle, CONSOLE_CB, ctypes.c_void_p]),
    "keel_config_free": (c_status, [c_handle]),
    "keel_vm_build": (c_status, [c_handle, ctypes.POINTER(c_handle)]),
    "keel_vm_start": (c_status, [c_handle]),
    "keel_vm_wait": (c_status, [c_handle, ctypes.c_uint64, ctypes.POINTER(ctypes.c_int32)]),
    "keel_vm_pause": (c_status, [c_handle]),
    "keel_vm_resume": (c_status, [c_handle]),
    "keel_vm_stop": (c_status, [c_handle]),
    "keel_vm_power_button": (c_status, [c_handle]),
    "keel_vm_state": (c_status, [c_handle, ctypes.POINTER(ctypes.c_int32)]),
    "keel_vm_exit_reason": (c_status, [c_handle, ctypes.POINTER(ctypes.c_int32)]),
    "keel_vm_describe_exit": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
    "keel_vm_counters_json": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
    "keel_vm_on_state_change": (c_status, [c_handle, STATE_CB, ctypes.c_void_p]),
    "keel_vm_state_fd": (c_status, [c_handle, ctypes.POINTER(ctypes.c_int)]),
    "keel_vm_free": (c_status, [c_handle]),
    "keel_cluster_load": (c_status, [ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(c_handle)]),
    "keel_cluster_free": (c_status, [c_handle]),
    "keel_placer_new": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_uint64, ctypes.POINTER(c_handle)]),
    "keel_placer_free": (c_status, [c_handle]),
    "keel_placer_decide": (c_status, [c_handle, ctypes.c_char_p, ctypes.POINTER(c_handle)]),
    "keel_placer_explain": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
    "keel_placer_release": (c_status, [c_handle, ctypes.c_char_p]),
    "keel_placer_placements": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
    "keel_claim_placement": (c_status, [c_handle, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
    "keel_claim_commit": (c_status, [c_handle]),
    "keel_claim_free": (c_status, [c_handle]),
}

for _name, (_restype, _argtypes) in _SIGNATURES.items():
    _function = getattr(lib, _name)
    _function.restype = _restype
    _function.argtypes = _argtypes

if lib.keel_abi_version() >> 16 != ABI_MAJOR:
    raise ImportError(
        f"libkeel implements ABI {lib.keel_abi_version() >> 16}, this binding needs {ABI_MAJOR}"
    )

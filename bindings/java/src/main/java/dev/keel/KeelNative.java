package dev.keel;

import com.sun.jna.Callback;
import com.sun.jna.Native;
import com.sun.jna.Pointer;

/**
 * libkeel's functions as JNA direct-mapped natives, one per function of {@code keel.h}. Types:
 * handles and {@code uint64_t} are {@code long}; {@code size_t} is {@code long} (Keel runs on
 * 64-bit Linux only); strings in are NUL-terminated UTF-8 {@code byte[]} (see {@link
 * Status#cstr}); out pointers are one-element primitive arrays.
 *
 * <p>Touch this class only after {@link NativeLoader#library()} succeeded: its static
 * initializer registers the natives against the library the loader opened.
 */
final class KeelNative {
    static {
        Native.register(KeelNative.class, NativeLoader.library());
    }

    private KeelNative() {}

    /** {@code keel_console_cb}: serial output, on the vCPU thread that wrote it. */
    interface ConsoleCallback extends Callback {
        void invoke(Pointer user, Pointer data, long len);
    }

    /** {@code keel_state_cb}: a state code, on Keel's state-dispatch thread. */
    interface StateCallback extends Callback {
        void invoke(Pointer user, int state);
    }

    static native int keel_abi_version();

    static native Pointer keel_version();

    static native long keel_live_handles();

    static native Pointer keel_last_error();

    static native Pointer keel_status_name(int status);

    // Placement.
    static native int keel_cluster_load(byte[] text, int format, long[] out);

    static native int keel_cluster_free(long cluster);

    static native int keel_placer_new(long cluster, byte[] policy, long seed, long[] out);

    static native int keel_placer_free(long placer);

    static native int keel_placer_decide(long placer, byte[] request, long[] out);

    /** The same, with request and out in native memory ({@link Scratch}). */
    static native int keel_placer_decide(long placer, Pointer request, Pointer out);

    static native int keel_placer_explain(long placer, byte[] buf, long len, long[] needed);

    static native int keel_claim_placement(long claim, byte[] buf, long len, long[] needed);

    static native int keel_claim_commit(long claim);

    static native int keel_claim_free(long claim);

    static native int keel_placer_release(long placer, byte[] id);

    static native int keel_placer_release(long placer, Pointer id);

    static native int keel_placer_placements(long placer, byte[] buf, long len, long[] needed);

    // VM configs.
    static native int keel_config_new(byte[] kernel, long[] out);

    static native int keel_config_from_json(byte[] json, long[] out);

    static native int keel_config_to_json(long config, byte[] buf, long len, long[] needed);

    static native int keel_config_set_vcpus(long config, int vcpus);

    static native int keel_config_set_memory_mib(long config, long mib);

    static native int keel_config_set_initrd(long config, byte[] path);

    static native int keel_config_set_cmdline(long config, byte[] cmdline);

    static native int keel_config_set_transport(long config, int transport);

    static native int keel_config_set_seccomp(long config, int mode);

    static native int keel_config_add_disk(
            long config, byte[] id, byte[] path, boolean readOnly, boolean direct);

    static native int keel_config_add_net_tap(long config, byte[] id, byte[] tap, byte[] mac);

    static native int keel_config_add_net_fd(long config, byte[] id, int fd, byte[] mac);

    static native int keel_config_set_vsock(long config, byte[] id, long cid, byte[] socket);

    static native int keel_config_set_rng(long config, byte[] id);

    static native int keel_config_set_console_fd(long config, int fd);

    static native int keel_config_set_console_callback(
            long config, ConsoleCallback callback, Pointer user);

    static native int keel_config_free(long config);

    // VMs.
    static native int keel_vm_build(long config, long[] out);

    static native int keel_vm_start(long vm);

    static native int keel_vm_wait(long vm, long timeoutMs, int[] reason);

    static native int keel_vm_pause(long vm);

    static native int keel_vm_resume(long vm);

    static native int keel_vm_stop(long vm);

    static native int keel_vm_power_button(long vm);

    static native int keel_vm_state(long vm, int[] state);

    static native int keel_vm_exit_reason(long vm, int[] reason);

    static native int keel_vm_describe_exit(long vm, byte[] buf, long len, long[] needed);

    static native int keel_vm_counters_json(long vm, byte[] buf, long len, long[] needed);

    static native int keel_vm_on_state_change(long vm, StateCallback callback, Pointer user);

    static native int keel_vm_state_fd(long vm, int[] fd);

    static native int keel_vm_free(long vm);
}

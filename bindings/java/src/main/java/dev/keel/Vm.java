package dev.keel;

import com.sun.jna.CallbackThreadInitializer;
import com.sun.jna.Native;
import com.sun.jna.Pointer;
import java.lang.ref.Reference;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.function.Consumer;

/**
 * A built VM, the counterpart of Rust's {@code vmm_core::Vm} with its {@code VmHandle}: start it,
 * wait for it, pause, resume, stop it or press its power button from any thread, read its state,
 * exit reason and counters, and listen to its state changes.
 *
 * <p>{@link #close()} stops the VM if it runs, waits for its threads and frees it; after it
 * returns no callback of this VM runs. Closing twice does nothing; any other call on a closed VM
 * throws {@link HandleException}. A VM that is never closed is stopped and freed when it is
 * garbage-collected (callbacks that refer to the VM keep it reachable: close such a VM). Wrong
 * states throw {@link StateException}: pausing a VM that is not running, waiting for one never
 * started.
 */
public final class Vm implements AutoCloseable {
    private final NativeHandle handle;

    Vm(long id, List<Object> callbacks) {
        handle = new NativeHandle(this, "Vm", id, KeelNative::keel_vm_free);
        // The config's console callback: libkeel calls it until this VM is freed.
        for (Object callback : callbacks) {
            handle.keep(callback);
        }
    }

    /**
     * Starts the vCPUs.
     *
     * @throws StateException when the VM was started already
     */
    public void start() {
        try {
            Status.check(KeelNative.keel_vm_start(handle.get()));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Pauses a running VM; returns once every vCPU is parked (at most 5 s).
     *
     * @throws StateException when the VM is not running
     * @throws ThreadException from inside one of this VM's callbacks
     */
    public void pause() {
        try {
            Status.check(KeelNative.keel_vm_pause(handle.get()));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Resumes a paused VM (a running one stays running).
     *
     * @throws StateException when the VM has exited or never started
     */
    public void resume() {
        try {
            Status.check(KeelNative.keel_vm_resume(handle.get()));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /** Asks the VM to stop now (exit reason {@link ExitReason#STOPPED} unless it exited first); does not wait. */
    public void stop() {
        try {
            Status.check(KeelNative.keel_vm_stop(handle.get()));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /** Presses the ACPI power button: a guest OS that listens shuts down ({@link ExitReason#SHUTDOWN}). */
    public void powerButton() {
        try {
            Status.check(KeelNative.keel_vm_power_button(handle.get()));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Waits until the VM exits, without a limit.
     *
     * @return why it exited
     * @throws StateException for a VM never started
     * @throws ThreadException from inside one of this VM's callbacks
     */
    public ExitReason waitFor() {
        return waitFor(null);
    }

    /**
     * Waits until the VM exits or {@code timeout} passes.
     *
     * @param timeout how long to wait (millisecond resolution; zero only looks), or {@code null}
     *     for no limit
     * @return why it exited
     * @throws KeelTimeoutException when the time ran out and the VM still runs
     * @throws StateException for a VM never started
     * @throws ThreadException from inside one of this VM's callbacks
     */
    public ExitReason waitFor(Duration timeout) {
        long millis;
        if (timeout == null) {
            millis = -1; // KEEL_WAIT_FOREVER (UINT64_MAX)
        } else if (timeout.isNegative()) {
            millis = 0;
        } else {
            try {
                millis = timeout.toMillis();
            } catch (ArithmeticException tooLong) {
                millis = -1;
            }
        }
        try {
            int[] reason = new int[1];
            Status.check(KeelNative.keel_vm_wait(handle.get(), millis, reason));
            return ExitReason.of(reason[0]);
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * The VM's state now.
     *
     * @return the state
     */
    public VmState state() {
        try {
            int[] state = new int[1];
            Status.check(KeelNative.keel_vm_state(handle.get(), state));
            return VmState.of(state[0]);
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Why the VM exited.
     *
     * @return the reason, or empty while it has not exited
     */
    public Optional<ExitReason> exitReason() {
        try {
            int[] reason = new int[1];
            int status = KeelNative.keel_vm_exit_reason(handle.get(), reason);
            if (status == Status.STATE) {
                return Optional.empty();
            }
            Status.check(status);
            return Optional.of(ExitReason.of(reason[0]));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * The exit as text, with its detail ({@code "guest shutdown"}, {@code "triple fault on vCPU
     * 0"}).
     *
     * @return the description, or empty while the VM has not exited
     */
    public Optional<String> exitDescription() {
        try {
            return Optional.of(Status.read(KeelNative::keel_vm_describe_exit, handle.get()));
        } catch (StateException running) {
            return Optional.empty();
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * The VM's counters as JSON: vCPU exits by kind, and per device the serial bytes, block
     * operations and bytes, network frames, vsock packets, rng bytes.
     *
     * @return the JSON document
     */
    public String countersJson() {
        try {
            return Status.read(KeelNative::keel_vm_counters_json, handle.get());
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * The VM's counters (see {@link #countersJson()}), parsed: {@code counters().get("vcpus")} is
     * the list of per-vCPU exit counts.
     *
     * @return the document's members
     */
    public Map<String, Object> counters() {
        return Json.parseObject(countersJson());
    }

    /**
     * Calls {@code listener} with the current state now, then with every state change, in order,
     * on a thread of Keel's (an attached daemon thread named {@code keel-state}), until the VM is
     * closed. The listener may read the VM ({@link #state()}, {@link #exitReason()}) but {@link
     * #waitFor}, {@link #pause()} and {@link #close()} from it throw {@link ThreadException}. An
     * exception it throws goes to the thread's uncaught-exception handler.
     *
     * @param listener receives each state
     */
    public void onStateChange(Consumer<VmState> listener) {
        Objects.requireNonNull(listener, "listener");
        KeelNative.StateCallback callback =
                (user, state) -> {
                    try {
                        listener.accept(VmState.of(state));
                    } catch (Throwable err) {
                        VmConfig.uncaught(err);
                    }
                };
        Native.setCallbackThreadInitializer(callback, new CallbackThreadInitializer(true, false, "keel-state"));
        try {
            handle.keep(callback);
            Status.check(KeelNative.keel_vm_on_state_change(handle.get(), callback, Pointer.NULL));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Whether {@link #close()} freed this VM.
     *
     * @return true once closed
     */
    public boolean isClosed() {
        return handle.isClosed();
    }

    /**
     * Stops the VM if it runs, waits for its threads to end and frees it. Closing twice does
     * nothing.
     *
     * @throws ThreadException from inside one of this VM's callbacks (the VM stays open)
     */
    @Override
    public void close() {
        try {
            handle.close();
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    @Override
    public String toString() {
        if (handle.isClosed()) {
            return "Vm(closed)";
        }
        try {
            return "Vm(" + state() + ")";
        } catch (KeelException closing) {
            return "Vm(closed)";
        }
    }
}

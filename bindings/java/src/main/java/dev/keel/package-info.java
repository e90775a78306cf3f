/**
 * Keel from Java: boot and manage VMs on Linux/KVM and decide where they run, over libkeel's C
 * ABI ({@code capi/include/keel.h}) through JNA.
 *
 * <p>The classes follow the Rust API's shape: {@link dev.keel.VmConfig} (a checked builder) builds
 * a {@link dev.keel.Vm}; a {@link dev.keel.Cluster} description feeds a {@link dev.keel.Placer},
 * whose {@link dev.keel.Placer#decide(String) decisions} are {@link dev.keel.Claim}s to commit,
 * and whose rejections carry an {@link dev.keel.Explanation}.
 *
 * <p><b>Errors.</b> Every failing libkeel call throws a {@link dev.keel.KeelException} subclass
 * named after its C status code, with libkeel's message (it names the function and the argument
 * or config field). The message is read on the calling thread right after the call, which is where
 * libkeel keeps it.
 *
 * <p><b>Lifetimes.</b> Each object owns one libkeel handle. {@code close()} frees it (closing twice
 * does nothing); an object that is never closed is freed by a {@link java.lang.ref.Cleaner} once
 * unreachable. Using a closed object throws {@link dev.keel.HandleException}: libkeel's handles
 * are generation-checked, so even a race between a call and a close is an exception, never a
 * crash. Java callbacks (console output, state changes) stay reachable until the VM that calls
 * them is freed.
 *
 * <p><b>Threads.</b> Every object may be used from any thread. Callbacks run on Keel's threads
 * (attached to the JVM as daemon threads); from inside them, {@link dev.keel.Vm#waitFor},
 * {@link dev.keel.Vm#pause()} and {@link dev.keel.Vm#close()} throw {@link
 * dev.keel.ThreadException} instead of deadlocking.
 *
 * <p><b>The library.</b> libkeel is found through the system property {@code keel.library.path}
 * (a file, or a directory holding {@code libkeel.so.0}), the environment variable {@code
 * KEEL_LIBRARY}, {@code java.library.path}, then JNA's and the system's search; when it is
 * missing, the first use throws an {@link java.lang.UnsatisfiedLinkError} that names these
 * settings. Build it in a Keel checkout with {@code cargo build --profile capi -p keel-capi}.
 */
package dev.keel;

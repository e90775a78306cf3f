package dev.keel;

import com.sun.jna.CallbackThreadInitializer;
import com.sun.jna.Library;
import com.sun.jna.Native;
import com.sun.jna.Pointer;
import java.lang.ref.Reference;
import java.nio.file.Path;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.function.Consumer;

/**
 * A VM's configuration, the counterpart of Rust's {@code vmm_core::VmConfig}: a fluent builder
 * whose every setter is checked by libkeel at once, so a bad value fails where it is set, with
 * {@link InvalidArgumentException} naming the field ({@code invalid VM config field `vcpus`}),
 * and leaves the config as it was.
 *
 * <pre>{@code
 * try (VmConfig config = new VmConfig("vmlinux").vcpus(2).memoryMib(256).cmdline("console=ttyS0")
 *         .console(bytes -> System.out.print(new String(bytes, UTF_8)));
 *      Vm vm = config.build()) {
 *     vm.start();
 *     ExitReason reason = vm.waitFor(Duration.ofSeconds(30));
 * }
 * }</pre>
 *
 * <p>Defaults: 1 vCPU, 128 MiB, serial output to the process's standard output, no devices.
 * Files (kernel, initrd, disk images) are opened by {@link #build()}, not by the setters. A config
 * can build any number of VMs and may be closed once they are built. {@link #close()} frees it
 * (idempotent); a config that is never closed is freed when it is garbage-collected. Using a closed
 * config throws {@link HandleException}. Safe to use from several threads.
 */
public final class VmConfig implements AutoCloseable {
    private final NativeHandle handle;

    /**
     * A config for the kernel at {@code kernel} (ELF {@code vmlinux} or {@code bzImage}) with
     * Keel's defaults.
     *
     * @param kernel the kernel's path (opened at {@link #build()})
     * @throws NullArgumentException when {@code kernel} is null
     * @throws UnsatisfiedLinkError when libkeel cannot be found
     */
    public VmConfig(String kernel) {
        this(create(kernel));
    }

    /**
     * A config for the kernel at {@code kernel}; see {@link #VmConfig(String)}.
     *
     * @param kernel the kernel's path
     */
    public VmConfig(Path kernel) {
        this(kernel.toString());
    }

    private VmConfig(long id) {
        handle = new NativeHandle(this, "VmConfig", id, KeelNative::keel_config_free);
    }

    private static long create(String kernel) {
        Keel.load();
        long[] out = new long[1];
        Status.check(KeelNative.keel_config_new(Status.cstr("kernel", kernel), out));
        return out[0];
    }

    /**
     * A config from the JSON form of Keel's {@code VmConfig}: the document {@code keel --config}
     * and the REST API's {@code vm.create} take, and {@link #toJson()} writes.
     *
     * @param json the document
     * @return the config
     * @throws InvalidArgumentException when the document is not a valid VM config (the message
     *     names the field)
     */
    public static VmConfig fromJson(String json) {
        Keel.load();
        long[] out = new long[1];
        Status.check(KeelNative.keel_config_from_json(Status.cstr("json", json), out));
        return new VmConfig(out[0]);
    }

    /**
     * A config from the JSON document held as a map (see {@link #fromJson(String)}).
     *
     * @param document the document's members
     * @return the config
     * @throws InvalidArgumentException when the document is not a valid VM config
     */
    public static VmConfig fromJson(Map<String, ?> document) {
        return fromJson(Json.write(document));
    }

    /**
     * The config as its JSON document ({@code {"vcpus": 1, "memory": 128, "kernel": ...}}).
     *
     * @return the document
     */
    public String toJson() {
        try {
            return Status.read(KeelNative::keel_config_to_json, handle.get());
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * The config as its JSON document, parsed (see {@link Json}).
     *
     * @return the document's members
     */
    public Map<String, Object> toMap() {
        return Json.parseObject(toJson());
    }

    /**
     * Sets the number of vCPUs.
     *
     * @param vcpus 1 to 254
     * @return this config
     * @throws InvalidArgumentException naming {@code vcpus} when out of range
     */
    public VmConfig vcpus(int vcpus) {
        try {
            Status.check(KeelNative.keel_config_set_vcpus(handle.get(), vcpus));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * The number of vCPUs.
     *
     * @return the count
     */
    public int vcpus() {
        return ((Number) toMap().get("vcpus")).intValue();
    }

    /**
     * Sets guest memory.
     *
     * @param mib the size in MiB
     * @return this config
     * @throws InvalidArgumentException naming {@code memory} when too small or too large
     */
    public VmConfig memoryMib(long mib) {
        try {
            Status.check(KeelNative.keel_config_set_memory_mib(handle.get(), mib));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Guest memory in MiB.
     *
     * @return the size
     */
    public long memoryMib() {
        return ((Number) toMap().get("memory")).longValue();
    }

    /**
     * Sets the kernel command line.
     *
     * @param cmdline the command line
     * @return this config
     * @throws NullArgumentException when {@code cmdline} is null
     */
    public VmConfig cmdline(String cmdline) {
        try {
            Status.check(KeelNative.keel_config_set_cmdline(handle.get(), Status.cstr("cmdline", cmdline)));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * The kernel command line.
     *
     * @return the command line
     */
    public String cmdline() {
        return (String) toMap().get("cmdline");
    }

    /**
     * Sets the initial ramdisk.
     *
     * @param path the initrd's path (opened at build), or {@code null} for none
     * @return this config
     */
    public VmConfig initrd(String path) {
        try {
            Status.check(KeelNative.keel_config_set_initrd(handle.get(), Status.cstr("initrd", path)));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Sets the initial ramdisk.
     *
     * @param path the initrd's path, or {@code null} for none
     * @return this config
     */
    public VmConfig initrd(Path path) {
        return initrd(path == null ? null : path.toString());
    }

    /**
     * The initial ramdisk.
     *
     * @return its path, if one is set
     */
    public Optional<String> initrd() {
        return Optional.ofNullable((String) toMap().get("initrd"));
    }

    /**
     * The kernel's path.
     *
     * @return the path
     */
    public String kernel() {
        return (String) toMap().get("kernel");
    }

    /**
     * Puts virtio devices on PCI or MMIO.
     *
     * @param transport where the devices sit
     * @return this config
     */
    public VmConfig transport(Transport transport) {
        Objects.requireNonNull(transport, "transport");
        try {
            Status.check(KeelNative.keel_config_set_transport(handle.get(), transport.code()));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Turns Keel's seccomp filters on the VM's threads on (the default) or off. A console
     * callback runs on a vCPU thread under that thread's filter, where opening a file fails and
     * a system call outside the filter ends the process (exit status 159); turn the filters off
     * for callbacks that need more.
     *
     * @param on whether the VM's threads get Keel's filters
     * @return this config
     */
    public VmConfig seccomp(boolean on) {
        try {
            Status.check(KeelNative.keel_config_set_seccomp(handle.get(), on ? 1 : 0));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Adds a read-write virtio-blk disk on a raw image, with buffered I/O.
     *
     * @param id the disk's serial number (at most 20 bytes, unique among the VM's devices)
     * @param path the image (opened at build)
     * @return this config
     * @throws InvalidArgumentException when the id is too long or taken
     */
    public VmConfig addDisk(String id, String path) {
        return addDisk(id, path, false, false);
    }

    /**
     * Adds a virtio-blk disk on a raw image.
     *
     * @param id the disk's serial number (at most 20 bytes, unique among the VM's devices)
     * @param path the image (opened at build)
     * @param readOnly the guest cannot write
     * @param direct {@code O_DIRECT}: bypass the host's page cache
     * @return this config
     * @throws InvalidArgumentException when the id is too long or taken
     */
    public VmConfig addDisk(String id, String path, boolean readOnly, boolean direct) {
        try {
            Status.check(
                    KeelNative.keel_config_add_disk(
                            handle.get(), Status.cstr("id", id), Status.cstr("path", path), readOnly, direct));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Adds a virtio-net card on a TAP device, with a MAC derived from {@code id}.
     *
     * @param id the card's name (unique among the VM's devices)
     * @param tap the TAP device's name
     * @return this config
     */
    public VmConfig addNetTap(String id, String tap) {
        return addNetTap(id, tap, null);
    }

    /**
     * Adds a virtio-net card on a TAP device.
     *
     * @param id the card's name (unique among the VM's devices)
     * @param tap the TAP device's name
     * @param mac the MAC ({@code "52:54:00:12:34:56"}), or {@code null} for one derived from id
     * @return this config
     * @throws InvalidArgumentException naming {@code mac} for a malformed MAC
     */
    public VmConfig addNetTap(String id, String tap, String mac) {
        try {
            Status.check(
                    KeelNative.keel_config_add_net_tap(
                            handle.get(), Status.cstr("id", id), Status.cstr("tap", tap), Status.cstr("mac", mac)));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Adds a virtio-net card on an open TAP descriptor (opened with {@code IFF_TAP | IFF_NO_PI |
     * IFF_VNET_HDR}). On success Keel owns {@code fd} and closes it with the VM (or with this
     * config if no VM is built from it); on failure the caller still owns it.
     *
     * @param id the card's name
     * @param fd the TAP descriptor
     * @param mac the MAC, or {@code null} for one derived from id
     * @return this config
     * @throws InvalidArgumentException when {@code fd} is not an open descriptor
     */
    public VmConfig addNetFd(String id, int fd, String mac) {
        try {
            Status.check(
                    KeelNative.keel_config_add_net_fd(handle.get(), Status.cstr("id", id), fd, Status.cstr("mac", mac)));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Sets the vsock device: the guest's context ID and the host side's Unix socket (guest
     * connections to port P go to {@code socket_P}).
     *
     * @param id the device's name
     * @param guestCid the guest's context ID, 3 and up
     * @param socket the host socket's path
     * @return this config
     * @throws InvalidArgumentException naming {@code guest_cid} for a reserved CID
     */
    public VmConfig vsock(String id, long guestCid, String socket) {
        try {
            Status.check(
                    KeelNative.keel_config_set_vsock(
                            handle.get(), Status.cstr("id", id), guestCid, Status.cstr("socket", socket)));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Adds a virtio-rng entropy device named {@code rng0}.
     *
     * @return this config
     */
    public VmConfig rng() {
        return rng("rng0");
    }

    /**
     * Adds a virtio-rng entropy device.
     *
     * @param id the device's name
     * @return this config
     */
    public VmConfig rng(String id) {
        try {
            Status.check(KeelNative.keel_config_set_rng(handle.get(), Status.cstr("id", id)));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Sends the guest's serial output to a descriptor (a pipe, file or socket). Keel writes to its
     * own duplicate, so the caller keeps {@code fd} and may close it. Replaces a console callback.
     *
     * @param fd an open descriptor
     * @return this config
     * @throws InvalidArgumentException when {@code fd} is not open
     */
    public VmConfig consoleFd(int fd) {
        try {
            Status.check(KeelNative.keel_config_set_console_fd(handle.get(), fd));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Appends the guest's serial output to a file, created if missing.
     *
     * @param file the file
     * @return this config
     * @throws HostException when the file cannot be opened
     */
    public VmConfig consoleFile(Path file) {
        // O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC (Linux values).
        int fd = LibC.open(file.toString(), 01 | 0100 | 02000 | 02000000, 0644);
        try {
            return consoleFd(fd);
        } finally {
            LibC.INSTANCE.close(fd);
        }
    }

    /**
     * Discards the guest's serial output ({@code /dev/null}).
     *
     * @return this config
     */
    public VmConfig consoleDiscard() {
        int fd = LibC.open("/dev/null", 01 | 02000000, 0);
        try {
            return consoleFd(fd);
        } finally {
            LibC.INSTANCE.close(fd);
        }
    }

    /**
     * Sends the guest's serial output to {@code console}, a chunk at a time, on the vCPU thread
     * that wrote it (an attached daemon thread named {@code keel-console}). It must return quickly;
     * it may call {@link Vm#state()} and the like, but {@link Vm#waitFor}, {@link Vm#pause()} and
     * {@link Vm#close()} from inside it throw {@link ThreadException}. An exception it throws goes
     * to the thread's uncaught-exception handler; Keel carries on. Replaces a console descriptor.
     *
     * <p>The callback is kept reachable by every VM built from this config until that VM is
     * closed. It must not refer to such a VM if the VM is to be freed by the garbage collector
     * rather than by {@link Vm#close()}.
     *
     * @param console receives each chunk of output (a fresh array it may keep)
     * @return this config
     */
    public VmConfig console(Consumer<byte[]> console) {
        Objects.requireNonNull(console, "console");
        KeelNative.ConsoleCallback callback =
                (user, data, len) -> {
                    try {
                        console.accept(data.getByteArray(0, (int) len));
                    } catch (Throwable err) {
                        uncaught(err);
                    }
                };
        Native.setCallbackThreadInitializer(callback, new CallbackThreadInitializer(true, false, "keel-console"));
        try {
            // Kept before libkeel may call it, and for as long as this config lives.
            handle.keep(callback);
            Status.check(KeelNative.keel_config_set_console_callback(handle.get(), callback, Pointer.NULL));
            return this;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Builds a VM: checks the config against the host (files, sizes, TAP devices), maps memory,
     * loads the kernel and creates the KVM VM. Its vCPUs wait for {@link Vm#start()}. TAP
     * descriptors given with {@link #addNetFd} move into this VM.
     *
     * @return the VM, in state {@link VmState#CREATED}
     * @throws InvalidArgumentException when a file is missing or unusable (the message names it)
     * @throws HostException when KVM or the host refuses
     */
    public Vm build() {
        try {
            long[] out = new long[1];
            Status.check(KeelNative.keel_vm_build(handle.get(), out));
            return new Vm(out[0], handle.kept());
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Whether {@link #close()} freed this config.
     *
     * @return true once closed
     */
    public boolean isClosed() {
        return handle.isClosed();
    }

    /** Frees the config; VMs built from it are not affected. Closing twice does nothing. */
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
        return handle.isClosed() ? "VmConfig(closed)" : "VmConfig" + toJson();
    }

    static void uncaught(Throwable err) {
        Thread thread = Thread.currentThread();
        try {
            thread.getUncaughtExceptionHandler().uncaughtException(thread, err);
        } catch (Throwable ignored) {
            // Nothing may escape into libkeel's thread.
        }
    }

    /** The two libc calls {@link #consoleFile} needs (open is variadic: JNA's interface mapping). */
    interface LibC extends Library {
        LibC INSTANCE = Native.load("c", LibC.class);

        int open(byte[] path, int flags, Object... mode);

        int close(int fd);

        String strerror(int errno);

        static int open(String path, int flags, int mode) {
            byte[] name = Status.cstr("path", path);
            int fd = INSTANCE.open(name, flags, mode);
            if (fd < 0) {
                int errno = Native.getLastError();
                throw new HostException("cannot open " + path + ": " + INSTANCE.strerror(errno));
            }
            return fd;
        }
    }
}

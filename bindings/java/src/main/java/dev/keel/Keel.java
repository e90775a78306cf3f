package dev.keel;

/**
 * The library as a whole: its version and live handles. libkeel is found and opened on first use
 * of any class of this package (see {@link #libraryFile()} for the search order).
 */
public final class Keel {
    /** The libkeel ABI major this binding is written for ({@code KEEL_ABI_MAJOR} of keel.h). */
    public static final int ABI_MAJOR = 0;

    private Keel() {}

    /**
     * Opens libkeel if it is not open yet. Every factory of this package calls it, so a missing
     * library is reported once, clearly, before any native call.
     *
     * @throws UnsatisfiedLinkError when libkeel cannot be found, naming {@code keel.library.path}
     *     and {@code java.library.path}
     */
    static void load() {
        NativeLoader.library();
    }

    /**
     * The file libkeel was loaded from. The search: system property {@code keel.library.path} (a
     * file, or a directory with {@code libkeel.so.0} or {@code libkeel.so}), then environment
     * variable {@code KEEL_LIBRARY}, then each directory of {@code java.library.path}, then JNA's
     * search ({@code jna.library.path}, {@code LD_LIBRARY_PATH}, the system's cache).
     *
     * @return the library's path
     * @throws UnsatisfiedLinkError when libkeel cannot be found
     */
    public static String libraryFile() {
        return NativeLoader.library().getFile().getPath();
    }

    /**
     * libkeel's version, such as {@code 0.1.0}.
     *
     * @return the version string
     */
    public static String version() {
        load();
        return KeelNative.keel_version().getString(0, "UTF-8");
    }

    /**
     * The ABI version libkeel implements, {@code major << 16 | minor}.
     *
     * @return the packed version
     */
    public static int abiVersion() {
        load();
        return KeelNative.keel_abi_version();
    }

    /**
     * How many handles (configs, VMs, clusters, placers, claims) libkeel has issued and not freed,
     * in this process. For leak checks: a closed or collected object holds none.
     *
     * @return the count
     */
    public static long liveHandles() {
        load();
        return KeelNative.keel_live_handles();
    }
}

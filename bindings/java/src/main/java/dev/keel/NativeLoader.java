package dev.keel;

import com.sun.jna.NativeLibrary;
import java.io.File;
import java.util.ArrayList;
import java.util.List;

/**
 * Finds and opens libkeel once per class loader. The search, in order:
 *
 * <ol>
 *   <li>system property {@code keel.library.path}: a file, or a directory holding {@code
 *       libkeel.so.0} or {@code libkeel.so};
 *   <li>environment variable {@code KEEL_LIBRARY} (the Python binding's): the same;
 *   <li>each directory of {@code java.library.path};
 *   <li>JNA's own search for {@code keel}: {@code jna.library.path}, then the system's loader
 *       ({@code LD_LIBRARY_PATH}, the {@code ldconfig} cache).
 * </ol>
 *
 * A failure is remembered and thrown again, with the same message, on every later attempt: it
 * never leaves a half-initialised class behind.
 */
final class NativeLoader {
    /** The property that names libkeel's file or directory. */
    static final String PROPERTY = "keel.library.path";

    private static final Object LOCK = new Object();
    private static volatile NativeLibrary library;
    private static volatile String failure;

    private NativeLoader() {}

    /**
     * libkeel, opened and checked against the ABI major this binding was written for.
     *
     * @throws UnsatisfiedLinkError when it cannot be found or is of another ABI major
     */
    static NativeLibrary library() {
        NativeLibrary found = library;
        if (found != null) {
            return found;
        }
        synchronized (LOCK) {
            if (library == null && failure == null) {
                try {
                    NativeLibrary opened = open();
                    checkAbi(opened);
                    library = opened;
                } catch (UnsatisfiedLinkError err) {
                    failure = err.getMessage();
                }
            }
            if (library != null) {
                return library;
            }
            throw new UnsatisfiedLinkError(failure);
        }
    }

    private static NativeLibrary open() {
        List<String> tried = new ArrayList<>();
        String property = System.getProperty(PROPERTY);
        if (property != null && !property.isBlank()) {
            return openAt(property, "-D" + PROPERTY, tried);
        }
        String env = System.getenv("KEEL_LIBRARY");
        if (env != null && !env.isBlank()) {
            return openAt(env, "KEEL_LIBRARY", tried);
        }
        String javaPath = System.getProperty("java.library.path", "");
        for (String dir : javaPath.split(File.pathSeparator)) {
            for (String name : new String[] {"libkeel.so.0", "libkeel.so"}) {
                File candidate = new File(dir, name);
                if (!dir.isEmpty() && candidate.isFile()) {
                    try {
                        return NativeLibrary.getInstance(candidate.getAbsolutePath());
                    } catch (UnsatisfiedLinkError err) {
                        tried.add(candidate + ": " + firstLine(err.getMessage()));
                    }
                }
            }
        }
        for (String name : new String[] {"keel", "libkeel.so.0"}) {
            try {
                return NativeLibrary.getInstance(name);
            } catch (UnsatisfiedLinkError err) {
                tried.add(name + ": " + firstLine(err.getMessage()));
            }
        }
        throw new UnsatisfiedLinkError(
                "libkeel not found: set -D"
                        + PROPERTY
                        + "=DIR_OR_FILE (a directory holding libkeel.so.0, such as target/capi of a"
                        + " Keel checkout after `cargo build --profile capi -p keel-capi`), or put"
                        + " libkeel.so on java.library.path (now \""
                        + System.getProperty("java.library.path", "")
                        + "\") or the system's library path. Tried: "
                        + String.join("; ", tried));
    }

    private static NativeLibrary openAt(String setting, String source, List<String> tried) {
        File path = new File(setting);
        List<File> candidates = new ArrayList<>();
        if (path.isDirectory()) {
            candidates.add(new File(path, "libkeel.so.0"));
            candidates.add(new File(path, "libkeel.so"));
        } else {
            candidates.add(path);
        }
        for (File candidate : candidates) {
            if (!candidate.isFile()) {
                tried.add(candidate + ": no such file");
                continue;
            }
            try {
                return NativeLibrary.getInstance(candidate.getAbsolutePath());
            } catch (UnsatisfiedLinkError err) {
                tried.add(candidate + ": " + firstLine(err.getMessage()));
            }
        }
        throw new UnsatisfiedLinkError(
                "libkeel not found at "
                        + source
                        + "=\""
                        + setting
                        + "\" ("
                        + String.join("; ", tried)
                        + "). Point "
                        + PROPERTY
                        + " at libkeel.so.0 or its directory (built by `cargo build --profile capi"
                        + " -p keel-capi` into target/capi), or unset it to search"
                        + " java.library.path.");
    }

    private static void checkAbi(NativeLibrary opened) {
        int abi = opened.getFunction("keel_abi_version").invokeInt(new Object[0]);
        int major = abi >>> 16;
        if (major != Keel.ABI_MAJOR) {
            throw new UnsatisfiedLinkError(
                    opened.getFile()
                            + " implements libkeel ABI "
                            + major
                            + "."
                            + (abi & 0xffff)
                            + "; this binding needs ABI major "
                            + Keel.ABI_MAJOR);
        }
    }

    /** The gist of a loader's message: JNA puts dlopen's reason on the line after its own. */
    private static String firstLine(String message) {
        if (message == null) {
            return "unknown error";
        }
        String[] lines = message.split("\n");
        return lines.length > 1 ? (lines[0] + " " + lines[1]).trim() : message.trim();
    }
}

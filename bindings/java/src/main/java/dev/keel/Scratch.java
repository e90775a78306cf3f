package dev.keel;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import java.nio.charset.StandardCharsets;

/**
 * A per-thread block of native memory for a call's out-value and string argument, so the hot
 * calls (decide, commit, release) pass plain pointers instead of Java arrays that JNA would copy
 * in and out. Layout: 8 bytes for the out-value, then the NUL-terminated UTF-8 string.
 *
 * <p>One libkeel call at a time per thread uses it, and its results are read before the next:
 * libkeel never calls back into Java on the thread that made a call.
 */
final class Scratch {
    private static final ThreadLocal<Scratch> LOCAL = ThreadLocal.withInitial(Scratch::new);
    static final long TEXT = 8;

    private Memory memory = new Memory(1024);

    private Scratch() {}

    static Scratch get() {
        return LOCAL.get();
    }

    /** The block, with {@code text} written after the out slot. */
    Pointer withText(String field, String text) {
        if (text == null) {
            throw new NullArgumentException(field + " is NULL");
        }
        if (text.indexOf('\0') >= 0) {
            throw new InvalidArgumentException(field + ": contains a NUL character");
        }
        byte[] utf8 = text.getBytes(StandardCharsets.UTF_8);
        if (TEXT + utf8.length + 1 > memory.size()) {
            memory = new Memory(Math.max(TEXT + utf8.length + 1, 2 * memory.size()));
        }
        memory.write(TEXT, utf8, 0, utf8.length);
        memory.setByte(TEXT + utf8.length, (byte) 0);
        return memory;
    }

    Pointer block() {
        return memory;
    }
}

package dev.keel;

import com.sun.jna.Pointer;
import java.nio.charset.StandardCharsets;

/** C status codes, their exceptions, strings in and out of libkeel. */
final class Status {
    static final int OK = 0;
    static final int NULL = 1;
    static final int UTF8 = 2;
    static final int HANDLE = 3;
    static final int INVALID = 4;
    static final int STATE = 5;
    static final int THREAD = 6;
    static final int TIMEOUT = 7;
    static final int HOST = 8;
    static final int UNSCHEDULABLE = 9;
    static final int CONFLICT = 10;
    static final int BUFFER = 11;
    static final int INTERNAL = 12;

    private static final String[] NAMES = {
        "KEEL_OK",
        "KEEL_ERR_NULL",
        "KEEL_ERR_UTF8",
        "KEEL_ERR_HANDLE",
        "KEEL_ERR_INVALID",
        "KEEL_ERR_STATE",
        "KEEL_ERR_THREAD",
        "KEEL_ERR_TIMEOUT",
        "KEEL_ERR_HOST",
        "KEEL_ERR_UNSCHEDULABLE",
        "KEEL_ERR_CONFLICT",
        "KEEL_ERR_BUFFER",
        "KEEL_ERR_INTERNAL",
    };

    private Status() {}

    static String name(int status) {
        return status >= 0 && status < NAMES.length ? NAMES[status] : "KEEL_ERR_UNKNOWN";
    }

    /**
     * Throws the exception for {@code status} unless it is {@code KEEL_OK}. Call it right after
     * the libkeel call, on the same thread: the message is libkeel's thread-local last error,
     * which the next call on this thread replaces (JNA runs a call on the calling Java thread).
     */
    static void check(int status) {
        if (status != OK) {
            throw error(status, lastError());
        }
    }

    /** libkeel's last error on this thread. */
    static String lastError() {
        Pointer message = KeelNative.keel_last_error();
        return message == null ? "" : message.getString(0, "UTF-8");
    }

    static KeelException error(int status, String message) {
        switch (status) {
            case NULL:
                return new NullArgumentException(message);
            case UTF8:
                return new EncodingException(message);
            case HANDLE:
                return new HandleException(message);
            case INVALID:
                return new InvalidArgumentException(message);
            case STATE:
                return new StateException(message);
            case THREAD:
                return new ThreadException(message);
            case TIMEOUT:
                return new KeelTimeoutException(message);
            case HOST:
                return new HostException(message);
            case UNSCHEDULABLE:
                return new UnschedulableException(message, null);
            case CONFLICT:
                return new ConflictException(message);
            case INTERNAL:
                return new InternalException(message);
            default:
                return new KeelException(message, status);
        }
    }

    /**
     * {@code value} as a NUL-terminated UTF-8 string for libkeel; {@code null} stays NULL (and
     * libkeel names the argument when NULL is not allowed).
     *
     * @throws InvalidArgumentException when the string holds a NUL character, which C would read
     *     as its end
     */
    static byte[] cstr(String field, String value) {
        if (value == null) {
            return null;
        }
        if (value.indexOf('\0') >= 0) {
            throw new InvalidArgumentException(field + ": contains a NUL character");
        }
        byte[] utf8 = value.getBytes(StandardCharsets.UTF_8);
        byte[] text = new byte[utf8.length + 1];
        System.arraycopy(utf8, 0, text, 0, utf8.length);
        return text;
    }

    /** A libkeel function that writes text into a caller's buffer. */
    @FunctionalInterface
    interface BufferCall {
        int call(long handle, byte[] buf, long len, long[] needed);
    }

    /**
     * Calls a libkeel function that fills a caller's buffer. The text can grow between the sizing
     * call and the filling one (counters move), so a short buffer is retried with the length
     * libkeel reports.
     */
    static String read(BufferCall function, long handle) {
        long[] needed = new long[1];
        int status = function.call(handle, null, 0, needed);
        while (true) {
            if (status != BUFFER) {
                check(status);
            }
            long size = needed[0] + 64;
            if (size > Integer.MAX_VALUE - 8) {
                throw new InternalException("libkeel asked for a " + needed[0] + "-byte buffer");
            }
            byte[] buffer = new byte[(int) size];
            status = function.call(handle, buffer, buffer.length, needed);
            if (status == OK) {
                int end = 0;
                while (end < buffer.length && buffer[end] != 0) {
                    end++;
                }
                return new String(buffer, 0, end, StandardCharsets.UTF_8);
            }
        }
    }
}

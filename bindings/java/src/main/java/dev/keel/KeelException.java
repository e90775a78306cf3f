package dev.keel;

/**
 * A libkeel call failed. The message is libkeel's last-error text for the call, read on the
 * calling thread right after it, and names the function and the argument or config field (for
 * example {@code keel_config_set_vcpus: invalid VM config field `vcpus`: ...}).
 *
 * <p>Each C status code has a subclass, so callers catch what they can handle: {@link
 * HandleException}, {@link InvalidArgumentException}, {@link StateException}, {@link
 * ThreadException}, {@link KeelTimeoutException}, {@link HostException}, {@link
 * UnschedulableException}, {@link ConflictException}, {@link NullArgumentException}, {@link
 * EncodingException}, {@link InternalException}. They are unchecked, like the errors of the JDK's
 * own I/O-free APIs; every method says which it throws.
 */
public class KeelException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** The C status code. */
    private final int status;

    /**
     * An error with libkeel status {@code status} and message {@code message}.
     *
     * @param message what went wrong, as libkeel said it
     * @param status the {@code KEEL_ERR_*} code
     */
    public KeelException(String message, int status) {
        super(message);
        this.status = status;
    }

    /**
     * The C status code ({@code KEEL_ERR_*}).
     *
     * @return the code, 1 to 12 for the codes libkeel defines
     */
    public int status() {
        return status;
    }

    /**
     * The C name of the status code, such as {@code KEEL_ERR_HANDLE}.
     *
     * @return the name, or {@code KEEL_ERR_UNKNOWN}
     */
    public String statusName() {
        return Status.name(status);
    }
}

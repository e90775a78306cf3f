package dev.keel;

/** {@code KEEL_ERR_NULL}: a required argument was null (the message names it). */
public class NullArgumentException extends KeelException {
    private static final long serialVersionUID = 1L;

    /**
     * An error with libkeel's message.
     *
     * @param message what went wrong
     */
    public NullArgumentException(String message) {
        super(message, Status.NULL);
    }
}

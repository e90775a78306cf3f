package dev.keel;

/** {@code KEEL_ERR_HANDLE}: the object was closed (freed) already, or the handle is of another kind. */
public class HandleException extends KeelException {
    private static final long serialVersionUID = 1L;

    /**
     * An error with libkeel's message.
     *
     * @param message what went wrong
     */
    public HandleException(String message) {
        super(message, Status.HANDLE);
    }
}

package dev.keel;

/** {@code KEEL_ERR_INTERNAL}: a bug in Keel (a Rust panic caught at the boundary); the JVM goes on, the object involved may not. */
public class InternalException extends KeelException {
    private static final long serialVersionUID = 1L;

    /**
     * An error with libkeel's message.
     *
     * @param message what went wrong
     */
    public InternalException(String message) {
        super(message, Status.INTERNAL);
    }
}

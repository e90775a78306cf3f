package dev.keel;

/** {@code KEEL_ERR_STATE}: the call does not apply in the object's current state (pausing a VM that is not running, committing a claim twice). */
public class StateException extends KeelException {
    private static final long serialVersionUID = 1L;

    /**
     * An error with libkeel's message.
     *
     * @param message what went wrong
     */
    public StateException(String message) {
        super(message, Status.STATE);
    }
}

package dev.keel;

/** {@code KEEL_ERR_CONFLICT}: another decider changed the allocations first; decide again. */
public class ConflictException extends KeelException {
    private static final long serialVersionUID = 1L;

    /**
     * An error with libkeel's message.
     *
     * @param message what went wrong
     */
    public ConflictException(String message) {
        super(message, Status.CONFLICT);
    }
}

package dev.keel;

/** {@code KEEL_ERR_INVALID}: an argument or config field has a bad value; the message names the field and says why. */
public class InvalidArgumentException extends KeelException {
    private static final long serialVersionUID = 1L;

    /**
     * An error with libkeel's message.
     *
     * @param message what went wrong
     */
    public InvalidArgumentException(String message) {
        super(message, Status.INVALID);
    }
}

package dev.keel;

/** {@code KEEL_ERR_UTF8}: a string was not valid UTF-8. */
public class EncodingException extends KeelException {
    private static final long serialVersionUID = 1L;

    /**
     * An error with libkeel's message.
     *
     * @param message what went wrong
     */
    public EncodingException(String message) {
        super(message, Status.UTF8);
    }
}

package dev.keel;

/** {@code KEEL_ERR_TIMEOUT}: the timeout passed before the VM exited ({@link Vm#waitFor(java.time.Duration)}). */
public class KeelTimeoutException extends KeelException {
    private static final long serialVersionUID = 1L;

    /**
     * An error with libkeel's message.
     *
     * @param message what went wrong
     */
    public KeelTimeoutException(String message) {
        super(message, Status.TIMEOUT);
    }
}

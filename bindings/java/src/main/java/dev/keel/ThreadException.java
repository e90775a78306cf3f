package dev.keel;

/** {@code KEEL_ERR_THREAD}: a call that would block (waiting for, pausing or closing a VM) made from inside one of that VM's callbacks. */
public class ThreadException extends KeelException {
    private static final long serialVersionUID = 1L;

    /**
     * An error with libkeel's message.
     *
     * @param message what went wrong
     */
    public ThreadException(String message) {
        super(message, Status.THREAD);
    }
}

package dev.keel;

/** {@code KEEL_ERR_HOST}: the host refused (a file, a TAP device, KVM, a thread). */
public class HostException extends KeelException {
    private static final long serialVersionUID = 1L;

    /**
     * An error with libkeel's message.
     *
     * @param message what went wrong
     */
    public HostException(String message) {
        super(message, Status.HOST);
    }
}

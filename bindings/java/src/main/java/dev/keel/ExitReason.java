package dev.keel;

/** Why a VM stopped ({@code KEEL_EXIT_*}). */
public enum ExitReason {
    /** The guest reset the machine. */
    RESET(1),
    /** The guest powered off (after the ACPI power button, say). */
    SHUTDOWN(2),
    /** {@link Vm#stop()} or {@link Vm#close()} stopped it. */
    STOPPED(3),
    /** A vCPU triple-faulted. */
    TRIPLE_FAULT(4),
    /** KVM could not run a guest instruction. */
    INTERNAL_ERROR(5),
    /** Entering the guest failed. */
    ENTRY_FAILED(6),
    /** The VMM failed; {@link Vm#exitDescription()} has the detail. */
    FAILED(7);

    private final int code;

    ExitReason(int code) {
        this.code = code;
    }

    /**
     * The C constant.
     *
     * @return the {@code KEEL_EXIT_*} value
     */
    public int code() {
        return code;
    }

    static ExitReason of(int code) {
        for (ExitReason reason : values()) {
            if (reason.code == code) {
                return reason;
            }
        }
        throw new InternalException("libkeel reported unknown exit reason " + code);
    }
}

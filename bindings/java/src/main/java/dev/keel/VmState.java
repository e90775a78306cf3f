package dev.keel;

/** A VM's lifecycle state ({@code KEEL_STATE_*}). */
public enum VmState {
    /** Built, not started. */
    CREATED(1),
    /** Running guest code. */
    RUNNING(2),
    /** Paused: every vCPU parked. */
    PAUSED(3),
    /** Exited; {@link Vm#exitReason()} says why. */
    EXITED(4);

    private final int code;

    VmState(int code) {
        this.code = code;
    }

    /**
     * The C constant.
     *
     * @return the {@code KEEL_STATE_*} value
     */
    public int code() {
        return code;
    }

    static VmState of(int code) {
        for (VmState state : values()) {
            if (state.code == code) {
                return state;
            }
        }
        throw new InternalException("libkeel reported unknown VM state " + code);
    }
}

package dev.keel;

/** Where a VM's virtio devices sit ({@code KEEL_TRANSPORT_*}). */
public enum Transport {
    /** On a PCI bus (the default). */
    PCI(1),
    /** On MMIO, announced on the kernel command line. */
    MMIO(2);

    private final int code;

    Transport(int code) {
        this.code = code;
    }

    /**
     * The C constant.
     *
     * @return the {@code KEEL_TRANSPORT_*} value
     */
    public int code() {
        return code;
    }
}

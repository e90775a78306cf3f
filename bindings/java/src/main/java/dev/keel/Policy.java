package dev.keel;

/** How a {@link Placer} scores the hosts that fit. */
public enum Policy {
    /** Least allocated first: spread load, keep headroom everywhere (the default). */
    SPREAD("spread"),
    /** Most allocated first: fill hosts before opening new ones. */
    PACK("pack"),
    /** Keep per-class utilisation even on each host. */
    BALANCED("balanced"),
    /** Keep empty hosts empty so they can be powered off (oVirt's power saving). */
    POWER_SAVING("power_saving"),
    /** Even VM count per host (oVirt's evenly distributed). */
    EVEN_VM_COUNT("even_vm_count"),
    /** Minimise capacity left unusable because another class ran out. */
    STRANDED_AWARE("stranded_aware");

    private final String wireName;

    Policy(String wireName) {
        this.wireName = wireName;
    }

    /**
     * The name libkeel takes ({@code "spread"}).
     *
     * @return the name
     */
    public String wireName() {
        return wireName;
    }
}

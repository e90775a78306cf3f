package dev.keel;

import java.lang.ref.Reference;

/**
 * A decided placement not yet committed, from {@link Placer#decide(String)}: read where it goes,
 * then {@link #commit()} it into the placer's allocations or {@link #close()} it to drop it
 * (nothing was allocated for it). Optimistic: a commit after another decider changed what matters
 * throws {@link ConflictException}, and the caller decides again.
 */
public final class Claim implements AutoCloseable {
    private final NativeHandle handle;

    Claim(long id) {
        handle = new NativeHandle(this, "Claim", id, KeelNative::keel_claim_free);
    }

    /**
     * Where the claim places its request.
     *
     * @return the placement
     */
    public Placement placement() {
        return Placement.parse(placementJson());
    }

    /**
     * Where the claim places its request, as libkeel's JSON.
     *
     * @return the placement document
     */
    public String placementJson() {
        try {
            return Status.read(KeelNative::keel_claim_placement, handle.get());
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Commits the claim into its placer's allocations. The claim is spent either way.
     *
     * @throws ConflictException when the allocations changed under it (decide again)
     * @throws StateException when it was committed already
     */
    public void commit() {
        try {
            Status.check(KeelNative.keel_claim_commit(handle.get()));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Whether {@link #close()} freed this claim.
     *
     * @return true once closed
     */
    public boolean isClosed() {
        return handle.isClosed();
    }

    /** Frees the claim; an uncommitted one is dropped. Closing twice does nothing. */
    @Override
    public void close() {
        try {
            handle.close();
        } finally {
            Reference.reachabilityFence(this);
        }
    }
}

package dev.keel;

import com.sun.jna.Pointer;
import java.lang.ref.Reference;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * A cluster's allocations and a decider, the counterpart of Rust's {@code scheduling::Placer}:
 * decide where a request goes, commit or drop the claim, release a consumer, read why a request
 * found no host.
 *
 * <pre>{@code
 * try (Cluster cluster = Cluster.fromYaml(yaml); Placer placer = new Placer(cluster, Policy.PACK, 42)) {
 *     Placement placement = placer.place("{\"id\": \"vm-1\", \"resources\": {\"VCPU\": 2, \"MEMORY_MB\": 4096}}");
 * } catch (UnschedulableException err) {
 *     System.out.println(err.explanation().summary()); // 0/2 hosts available: 2 insufficient MEMORY_MB
 * }
 * }</pre>
 *
 * Requests are Keel's {@code PlacementRequest} in JSON, or the same document as a {@link Map}:
 * {@code {"id": "vm-1", "resources": {"VCPU": 2, "MEMORY_MB": 2048}}} plus, as needed, traits,
 * aggregates, tolerations, affinity, groups and topology spread.
 */
public final class Placer implements AutoCloseable {
    private final NativeHandle handle;

    /**
     * A placer over {@code cluster} with the {@link Policy#SPREAD} policy and seed 0.
     *
     * @param cluster the cluster (it may be closed afterwards: the placer keeps its own reference)
     */
    public Placer(Cluster cluster) {
        this(cluster, Policy.SPREAD, 0);
    }

    /**
     * A placer over {@code cluster}, with no allocations yet.
     *
     * @param cluster the cluster (it may be closed afterwards)
     * @param policy how hosts that fit are scored
     * @param seed the seed of the decider's random choices (equal seeds decide alike)
     * @throws HandleException when the cluster is closed
     */
    public Placer(Cluster cluster, Policy policy, long seed) {
        Objects.requireNonNull(policy, "policy");
        long[] out = new long[1];
        try {
            Status.check(KeelNative.keel_placer_new(cluster.id(), Status.cstr("policy", policy.wireName()), seed, out));
        } finally {
            Reference.reachabilityFence(cluster);
        }
        handle = new NativeHandle(this, "Placer", out[0], KeelNative::keel_placer_free);
    }

    /**
     * Decides where {@code request} goes, without changing the allocations.
     *
     * @param request a {@code PlacementRequest} in JSON
     * @return the claim, to commit or close
     * @throws UnschedulableException when no host fits, with the {@link Explanation}
     * @throws InvalidArgumentException when the request is malformed (the message names the field)
     */
    public Claim decide(String request) {
        try {
            long id = handle.get();
            Scratch scratch = Scratch.get();
            Pointer block = scratch.withText("request", request);
            int status = KeelNative.keel_placer_decide(id, block.share(Scratch.TEXT), block);
            if (status == Status.UNSCHEDULABLE) {
                String message = Status.lastError();
                Explanation explanation;
                try {
                    explanation = Explanation.parse(Status.read(KeelNative::keel_placer_explain, id));
                } catch (KeelException unreadable) {
                    explanation = null;
                }
                throw new UnschedulableException(message, explanation);
            }
            Status.check(status);
            return new Claim(block.getLong(0));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Decides where {@code request} goes (see {@link #decide(String)}).
     *
     * @param request the request's members
     * @return the claim
     */
    public Claim decide(Map<String, ?> request) {
        return decide(Json.write(request));
    }

    /**
     * Decides and commits: the request's resources are allocated on the host chosen.
     *
     * @param request a {@code PlacementRequest} in JSON
     * @return where it went
     * @throws UnschedulableException when no host fits, with the {@link Explanation}
     * @throws ConflictException when another decider changed the allocations in between
     */
    public Placement place(String request) {
        try (Claim claim = decide(request)) {
            Placement placement = claim.placement();
            claim.commit();
            return placement;
        }
    }

    /**
     * Decides and commits (see {@link #place(String)}).
     *
     * @param request the request's members
     * @return where it went
     */
    public Placement place(Map<String, ?> request) {
        return place(Json.write(request));
    }

    /**
     * Why the last decision found no host.
     *
     * @return the explanation
     * @throws StateException when the last decision placed its request
     */
    public Explanation explain() {
        try {
            return Explanation.parse(Status.read(KeelNative::keel_placer_explain, handle.get()));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Releases the committed allocation of {@code consumer} (a request's id), freeing its
     * capacity.
     *
     * @param consumer the request's id
     * @throws InvalidArgumentException when nothing is allocated to it
     */
    public void release(String consumer) {
        try {
            long id = handle.get();
            Status.check(KeelNative.keel_placer_release(id, Scratch.get().withText("consumer", consumer).share(Scratch.TEXT)));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Every committed placement as a JSON array: what a manager persists to rebuild the state.
     *
     * @return the JSON document
     */
    public String placementsJson() {
        try {
            return Status.read(KeelNative::keel_placer_placements, handle.get());
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * Every committed placement.
     *
     * @return the placements, in commit order
     */
    @SuppressWarnings("unchecked")
    public List<Placement> placements() {
        List<Placement> placements = new ArrayList<>();
        for (Object item : (List<Object>) Json.parse(placementsJson())) {
            Map<String, Object> placement = (Map<String, Object>) item;
            placements.add(Placement.of(placement, Json.write(placement)));
        }
        return Collections.unmodifiableList(placements);
    }

    NativeHandle handle() {
        return handle;
    }

    /**
     * Whether {@link #close()} freed this placer.
     *
     * @return true once closed
     */
    public boolean isClosed() {
        return handle.isClosed();
    }

    /** Frees the placer; claims it decided stay usable until closed. Closing twice does nothing. */
    @Override
    public void close() {
        try {
            handle.close();
        } finally {
            Reference.reachabilityFence(this);
        }
    }
}

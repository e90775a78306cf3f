package dev.keel;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.ref.Reference;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;
import java.util.Map;

/**
 * A cluster description, the counterpart of Rust's {@code scheduling::Cluster}: hosts as resource
 * provider trees with inventories, traits, aggregates and taints. Load one, then make {@link
 * Placer}s over it.
 *
 * <pre>{@code
 * hosts:
 * - name: a
 *   inventories: {VCPU: {total: 8}, MEMORY_MB: {total: 16384}}
 * }</pre>
 *
 * {@link #close()} frees it (placers made from it keep their own reference); it is freed when
 * garbage-collected otherwise.
 */
public final class Cluster implements AutoCloseable {
    private static final int JSON = 1;
    private static final int YAML = 2;

    private final NativeHandle handle;

    private Cluster(long id) {
        handle = new NativeHandle(this, "Cluster", id, KeelNative::keel_cluster_free);
    }

    private static Cluster load(String text, int format) {
        Keel.load();
        long[] out = new long[1];
        Status.check(KeelNative.keel_cluster_load(Status.cstr("text", text), format, out));
        return new Cluster(out[0]);
    }

    /**
     * Loads a description in JSON ({@code {"hosts": [...]}}).
     *
     * @param json the document
     * @return the cluster
     * @throws InvalidArgumentException when the document is not a cluster description (the message
     *     names the position)
     */
    public static Cluster fromJson(String json) {
        return load(json, JSON);
    }

    /**
     * Loads a description held as a map (see {@link #fromJson(String)}).
     *
     * @param document the document's members
     * @return the cluster
     */
    public static Cluster fromJson(Map<String, ?> document) {
        return load(Json.write(document), JSON);
    }

    /**
     * Loads a description in YAML.
     *
     * @param yaml the document
     * @return the cluster
     * @throws InvalidArgumentException when the document is not a cluster description
     */
    public static Cluster fromYaml(String yaml) {
        return load(yaml, YAML);
    }

    /**
     * Loads a description from a file: YAML when its name ends in {@code .yaml} or {@code .yml},
     * JSON otherwise.
     *
     * @param file the file
     * @return the cluster
     * @throws UncheckedIOException when the file cannot be read
     */
    public static Cluster load(Path file) {
        String text;
        try {
            text = Files.readString(file, StandardCharsets.UTF_8);
        } catch (IOException err) {
            throw new UncheckedIOException("cannot read cluster description " + file, err);
        }
        String name = file.getFileName().toString().toLowerCase(Locale.ROOT);
        return load(text, name.endsWith(".yaml") || name.endsWith(".yml") ? YAML : JSON);
    }

    long id() {
        return handle.get();
    }

    /**
     * Whether {@link #close()} freed this cluster.
     *
     * @return true once closed
     */
    public boolean isClosed() {
        return handle.isClosed();
    }

    /** Frees the cluster. Closing twice does nothing. */
    @Override
    public void close() {
        try {
            handle.close();
        } finally {
            Reference.reachabilityFence(this);
        }
    }
}

package dev.keel;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.lang.ref.Cleaner;
import java.util.ArrayList;
import java.util.List;
import java.util.function.LongToIntFunction;

/**
 * One libkeel handle, freed once: by {@link #close()}, or by the {@link Cleaner} when its owner
 * became unreachable without being closed. Holds strong references to the JNA callbacks libkeel
 * may call through this object ({@link #keep}) until it is freed, so they are never collected
 * while native code can still call them.
 *
 * <p>It refers to no owner, so the Cleaner can run it. No lock is taken around libkeel calls: a
 * callback may call into the object while another thread is closing it (libkeel's handle table
 * turns a use after free into {@code KEEL_ERR_HANDLE}).
 */
final class NativeHandle implements Runnable {
    private static final Cleaner CLEANER =
            Cleaner.create(
                    task -> {
                        Thread thread = new Thread(task, "keel-cleaner");
                        thread.setDaemon(true);
                        return thread;
                    });

    private static final VarHandle ID;

    static {
        try {
            ID = MethodHandles.lookup().findVarHandle(NativeHandle.class, "id", long.class);
        } catch (ReflectiveOperationException err) {
            throw new ExceptionInInitializerError(err);
        }
    }

    private final String kind;
    /** The handle, 0 once freed; read and swapped through {@link #ID}. */
    private volatile long id;
    private final LongToIntFunction free;
    /** Callbacks kept reachable, allocated on the first; guarded by {@code this}. */
    private List<Object> kept;
    private final Cleaner.Cleanable cleanable;

    NativeHandle(Object owner, String kind, long id, LongToIntFunction free) {
        this.kind = kind;
        this.id = id;
        this.free = free;
        this.cleanable = CLEANER.register(owner, this);
    }

    /**
     * The live handle.
     *
     * @throws HandleException when the object was closed
     */
    long get() {
        long value = id;
        if (value == 0) {
            throw new HandleException(kind + " is closed");
        }
        return value;
    }

    boolean isClosed() {
        return id == 0;
    }

    /** Keeps {@code callback} reachable until the handle is freed. */
    synchronized void keep(Object callback) {
        if (kept == null) {
            kept = new ArrayList<>();
        }
        kept.add(callback);
    }

    /** A copy of what is kept, to hand on to an object built from this one. */
    synchronized List<Object> kept() {
        return kept == null ? List.of() : new ArrayList<>(kept);
    }

    /**
     * Frees the handle; a second close, or a close racing another, does nothing. A free libkeel
     * refuses (a VM closed from inside its own callback: {@link ThreadException}) leaves the
     * object open.
     */
    void close() {
        long value = id;
        if (value == 0) {
            return;
        }
        int status = free.applyAsInt(value);
        if (status == Status.OK) {
            ID.compareAndSet(this, value, 0L);
            // Runs this.run() once, which finds the handle gone and drops the callbacks: libkeel
            // calls none after a successful free.
            cleanable.clean();
        } else if (status == Status.HANDLE) {
            // Another thread's close freed it first; that close drops the callbacks.
            ID.compareAndSet(this, value, 0L);
        } else {
            Status.check(status);
        }
    }

    /** The Cleaner's action (and the end of {@link #close()}): free what is left, drop callbacks. */
    @Override
    public void run() {
        long value = (long) ID.getAndSet(this, 0L);
        if (value != 0) {
            free.applyAsInt(value);
        }
        synchronized (this) {
            kept = null;
        }
    }
}

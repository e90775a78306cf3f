package dev.keel;

/**
 * {@code KEEL_ERR_UNSCHEDULABLE}: no host can take the request. {@link #explanation()} says why,
 * host by host, as data.
 */
public class UnschedulableException extends KeelException {
    private static final long serialVersionUID = 1L;

    private final transient Explanation explanation;

    /**
     * A rejection with libkeel's message and the placer's explanation.
     *
     * @param message libkeel's message (it starts with the summary)
     * @param explanation the explanation, or {@code null} if it could not be read
     */
    public UnschedulableException(String message, Explanation explanation) {
        super(message, Status.UNSCHEDULABLE);
        this.explanation = explanation;
    }

    /**
     * Why nothing fit.
     *
     * @return the explanation read right after the rejection, or {@code null} if none was read
     */
    public Explanation explanation() {
        return explanation;
    }
}

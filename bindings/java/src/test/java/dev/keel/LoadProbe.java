package dev.keel;

/**
 * Run in a JVM of its own by {@link LibraryLoadingTest}: tries to use libkeel twice and prints
 * what happened each time ({@code loaded ...} or {@code error ...}).
 */
public final class LoadProbe {
    private LoadProbe() {}

    public static void main(String[] args) {
        for (int i = 0; i < 2; i++) {
            try {
                System.out.println("loaded " + Keel.libraryFile() + " version " + Keel.version());
            } catch (UnsatisfiedLinkError err) {
                System.out.println("error " + err.getMessage());
            }
        }
    }
}

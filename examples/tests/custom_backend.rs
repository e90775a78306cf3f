//! The custom back-end example, run: the test guest drives an in-memory disk and a NIC on a
//! socketpair, both of the embedder's own.

#[test]
fn the_test_guest_drives_an_in_memory_disk_and_a_socketpair_nic() {
    testkit::require_kvm!();
    let report = examples::custom_backend::run().unwrap_or_else(|err| panic!("{err}"));
    assert!(report.contains("wrote 2560 bytes"), "{report}");
    assert!(report.contains("sent 3 frames"), "{report}");
}

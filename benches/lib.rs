//! Shared helpers for Keel benchmarks.

mod foreign_guest;

pub use foreign_guest::{foreign_guest_image, write_foreign_guest, FOREIGN_GUEST_LINE};

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::{ExitReason, VmBuilder, VmConfig};

    #[test]
    fn keel_boots_the_foreign_guest_and_it_powers_off_through_s5() {
        testkit::require_kvm!();
        let path = std::env::temp_dir().join(format!("keel-foreign-{}.elf", std::process::id()));
        write_foreign_guest(&path).unwrap();
        let out = testkit::SharedBuffer::new();
        let vm = VmBuilder::new(VmConfig::new(&path))
            .serial_output(out.clone())
            .build()
            .unwrap();
        assert_eq!(vm.run().unwrap(), ExitReason::Shutdown);
        assert_eq!(out.text(), FOREIGN_GUEST_LINE);
        std::fs::remove_file(path).unwrap();
    }
}

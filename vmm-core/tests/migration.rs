//! Live migration of Keel's test guest between two VMs, over a Unix socket pair and over TCP
//! on loopback: the guest counts on at the destination without a gap or a repeat, the source
//! stops; a destination that does not fit is refused and the source goes on running.

mod common;

use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{guest_config, TIMEOUT};
use testkit::{require_kvm, SharedBuffer};
use vmm_core::config::RngConfig;
use vmm_core::migration::{IncomingMigration, MigrationOptions};
use vmm_core::{ExitReason, MemSize, VirtioTransport, VmBuilder, VmConfig, VmState};

fn counting(transport: VirtioTransport) -> VmConfig {
    let mut config = guest_config(
        transport,
        "keel.rng keel.ticks=0 keel.tick_tsc=2000000 keel.power_button",
    );
    config.rng = Some(RngConfig {
        id: "rng0".into(),
        rate_limiter: None,
    });
    config
}

fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("keel-guest: tick ")?.parse().ok())
        .collect()
}

fn wait_for_tick(out: &SharedBuffer, at_least: u64) {
    let deadline = Instant::now() + TIMEOUT;
    while ticks(&out.text()).last().copied().unwrap_or(0) < at_least {
        assert!(
            Instant::now() < deadline,
            "no tick {at_least}:\n{}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Migrates a counting guest over the stream pair; checks the count goes on.
fn migrate<S: std::io::Read + std::io::Write + Send + 'static>(
    transport: VirtioTransport,
    source_end: S,
    destination_end: S,
) {
    let config = counting(transport);
    let out = SharedBuffer::new();
    let mut source = VmBuilder::new(config.clone())
        .serial_output(out.clone())
        .build()
        .unwrap();
    source.start().unwrap();
    wait_for_tick(&out, 3);

    let dest_out = SharedBuffer::new();
    let dest_serial = dest_out.clone();
    let receiver = std::thread::spawn(move || {
        let incoming = IncomingMigration::accept(destination_end).unwrap();
        let config = incoming.config().clone();
        incoming
            .receive(VmBuilder::new(config).serial_output(dest_serial))
            .unwrap_or_else(|err| panic!("receive: {err}"))
    });
    let handle = source.handle();
    let report = handle
        .send_migration(source_end, &MigrationOptions::default())
        .unwrap_or_else(|err| panic!("send: {err}"));
    let mut destination = receiver.join().unwrap();
    assert_eq!(
        source.wait_timeout(TIMEOUT),
        Some(ExitReason::Stopped),
        "the source ends"
    );
    assert_eq!(destination.state(), VmState::Running);
    // The pages the guest touched travel; the untouched rest of its 128 MiB is skipped.
    assert!(
        report.pages_sent > 0 && report.pages_sent < (128 << 20) / 4096,
        "{report:?}"
    );
    assert!(report.downtime_ms < report.total_ms, "{report:?}");
    let progress = handle.migration_progress().unwrap();
    assert_eq!(progress.phase, "done");

    let before = out.text();
    let last_before = ticks(&before).last().copied().unwrap_or(0);
    wait_for_tick(&dest_out, last_before + 3);
    let joined = format!("{before}{}", dest_out.text());
    let all = ticks(&joined);
    let expected: Vec<u64> = (1..=*all.last().unwrap()).collect();
    assert_eq!(
        all, expected,
        "the count goes on without a gap or repeat:\n{joined}"
    );
    assert!(!dest_out.text().contains("boot protocol"), "no second boot");
    destination.handle().power_button().unwrap();
    assert_eq!(
        destination.wait_timeout(TIMEOUT),
        Some(ExitReason::Shutdown)
    );
}

#[test]
fn a_counting_guest_moves_over_a_unix_socket_on_pci() {
    require_kvm!();
    let (a, b) = UnixStream::pair().unwrap();
    migrate(VirtioTransport::Pci, a, b);
}

#[test]
fn a_counting_guest_moves_over_tcp_on_mmio() {
    require_kvm!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let connect = std::thread::spawn(move || TcpStream::connect(address).unwrap());
    let (accepted, _) = listener.accept().unwrap();
    let connected = connect.join().unwrap();
    migrate(VirtioTransport::Mmio, connected, accepted);
}

#[test]
fn a_destination_that_does_not_fit_leaves_the_source_running() {
    require_kvm!();
    let config = counting(VirtioTransport::Pci);
    let out = SharedBuffer::new();
    let mut source = VmBuilder::new(config)
        .serial_output(out.clone())
        .build()
        .unwrap();
    source.start().unwrap();
    wait_for_tick(&out, 2);
    let (a, b) = UnixStream::pair().unwrap();
    let receiver = std::thread::spawn(move || {
        let incoming = IncomingMigration::accept(b).unwrap();
        let mut config = incoming.config().clone();
        config.memory = MemSize::mib(256);
        incoming
            .receive(VmBuilder::new(config))
            .err()
            .map(|err| err.to_string())
    });
    let err = source
        .handle()
        .send_migration(a, &MigrationOptions::default())
        .unwrap_err();
    let refused = receiver.join().unwrap().expect("the destination refuses");
    assert!(refused.contains("memory regions"), "{refused}");
    assert!(err.to_string().contains("aborted"), "{err}");
    // The source runs on.
    assert_eq!(source.state(), VmState::Running);
    let at = ticks(&out.text()).last().copied().unwrap();
    wait_for_tick(&out, at + 2);
    source.handle().stop();
    assert_eq!(source.wait_timeout(TIMEOUT), Some(ExitReason::Stopped));
}

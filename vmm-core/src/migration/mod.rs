//! Live migration between two Keel processes over any byte stream (a Unix socket, TCP).
//!
//! Pre-copy, as the VMMs that do this well do it: the source sends its config, the destination
//! maps memory of that shape and answers; the source turns on dirty-page logging (KVM's for
//! the guest's writes, guest memory's own bitmap for the VMM's), sends all memory while the
//! guest runs, then the pages dirtied meanwhile, round after round, until what is left would
//! take less than the downtime budget to send (or a round limit is reached). Then it pauses the
//! VM, saves its state (devices finish their requests first), sends the last dirty pages and
//! the state; the destination builds the VM from them, starts it and says so, and only then
//! does the source stop. If anything fails before the state is sent, the source goes on
//! running; if the destination refuses the state, the source resumes; if the connection
//! breaks after the state was sent, the source stays paused (the destination may be running)
//! and the error says so. The VM never runs in two places.

mod wire;

pub use wire::WireError;

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion};

use crate::config::VmConfig;
use crate::snapshot::{SnapshotError, VmSnapshot};
use crate::state::{StateError, VmHandle};
use crate::sync::lock;
use devices::GuestMemoryMmap;
use wire::Kind;

/// Size of a guest page as dirty logging counts them.
pub const PAGE_SIZE: u64 = PAGE_BYTES as u64;
/// [`PAGE_SIZE`] as a buffer length.
const PAGE_BYTES: usize = 4096;

/// How a migration trades total time for downtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationOptions {
    /// Stop pre-copying once the pages left would take at most this long to send.
    pub downtime: Duration,
    /// Stop pre-copying after this many rounds whatever is left.
    pub max_rounds: u32,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            downtime: Duration::from_millis(50),
            max_rounds: 20,
        }
    }
}

/// Where a migration stands (see [`VmHandle::migration_progress`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// `precopy`, `stop-and-copy`, `done` or `failed`.
    pub phase: String,
    /// Pre-copy rounds so far (round 0 sends all memory).
    pub round: u32,
    /// Pages sent so far.
    pub pages_sent: u64,
    /// Bytes written to the stream so far.
    pub bytes_sent: u64,
    /// Pages the last round found dirty.
    pub dirty_pages: u64,
    /// Pages dirtied per second in the last round.
    pub dirty_rate: f64,
    /// Sending speed so far, bytes per second.
    pub bandwidth: f64,
    /// Expected downtime if the VM were stopped now, in milliseconds.
    pub expected_downtime_ms: f64,
}

/// How a finished migration went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// From the first byte sent to the destination's go-ahead.
    pub total_ms: f64,
    /// From pausing the VM here to its running there.
    pub downtime_ms: f64,
    /// Pre-copy rounds.
    pub rounds: u32,
    /// Pages sent in all (pages dirtied again are sent again).
    pub pages_sent: u64,
    /// Bytes written to the stream.
    pub bytes_sent: u64,
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The VM cannot be migrated in its state.
    #[error("cannot migrate: {0}")]
    State(String),
    /// The stream failed or the peer broke the protocol, before the state was sent: the source
    /// goes on running.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The VM's state could not be saved.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A KVM call failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// errno from KVM.
        source: kvm_ioctls::Error,
    },
    /// The destination's memory or config does not fit.
    #[error("the destination does not fit the VM: {0}")]
    Mismatch(String),
    /// The state was sent but the destination's answer never came: it may be running the VM,
    /// so the source stays paused. Stop it once the destination is known to run, or resume it
    /// if not.
    #[error(
        "the destination did not confirm after the state was sent ({0}); the VM here stays paused"
    )]
    Unconfirmed(String),
}

/// The first frame: what the destination needs to get ready.
#[derive(Serialize, Deserialize)]
struct Hello {
    keel_version: String,
    config: VmConfig,
    memory_regions: Vec<(u64, u64)>,
}

fn regions(memory: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    memory
        .iter()
        .map(|region| (region.start_addr().0, region.len()))
        .collect()
}

fn pages_in(len: u64) -> usize {
    usize::try_from(len.div_ceil(PAGE_SIZE)).unwrap_or(usize::MAX)
}

/// The pages of each region dirtied since the last call (KVM's log and the VMM's bitmap, both
/// cleared by reading them).
fn take_dirty(
    vm: &kvm_ioctls::VmFd,
    memory: &GuestMemoryMmap,
) -> Result<Vec<Vec<u64>>, MigrationError> {
    memory
        .iter()
        .zip(0u32..)
        .map(|(region, slot)| {
            let size = usize::try_from(region.len()).unwrap_or(usize::MAX);
            let mut bitmap =
                vm.get_dirty_log(slot, size)
                    .map_err(|source| MigrationError::Kvm {
                        op: "KVM_GET_DIRTY_LOG",
                        source,
                    })?;
            // The region's whole bitmap (the mapping's), not a slice view of it.
            let vmm: &AtomicBitmap = std::ops::Deref::deref(region).bitmap();
            for (word, vmm_word) in bitmap.iter_mut().zip(vmm.get_and_reset()) {
                *word |= vmm_word;
            }
            bitmap.resize(pages_in(region.len()).div_ceil(64), 0);
            Ok(bitmap)
        })
        .collect()
}

fn count(bitmaps: &[Vec<u64>]) -> u64 {
    bitmaps
        .iter()
        .flatten()
        .map(|word| u64::from(word.count_ones()))
        .sum()
}

/// Every page that may hold data: the ones an anonymous region never had backed are left out
/// (they are zero, as the destination's fresh memory is).
fn all_pages(memory: &GuestMemoryMmap) -> Vec<Vec<u64>> {
    memory
        .iter()
        .map(|region| {
            if let Some(backed) = crate::resident::backed_pages(region) {
                return backed;
            }
            let pages = pages_in(region.len());
            let mut bitmap = vec![u64::MAX; pages.div_ceil(64)];
            if !pages.is_multiple_of(64) {
                if let Some(last) = bitmap.last_mut() {
                    *last = (1u64 << (pages % 64)) - 1;
                }
            }
            bitmap
        })
        .collect()
}

fn merge(into: &mut [Vec<u64>], from: &[Vec<u64>]) {
    for (a, b) in into.iter_mut().zip(from) {
        for (x, y) in a.iter_mut().zip(b) {
            *x |= y;
        }
    }
}

/// Set in a page's index on the wire when the page is all zeroes and its bytes are left out
/// (most of a fresh guest's memory; the destination's is already zero there).
const ZERO_PAGE: u64 = 1 << 63;

/// Whether `page` holds only zeroes (without an early exit, so that it vectorises).
fn is_zero(page: &[u8]) -> bool {
    let (chunks, tail) = page.as_chunks::<16>();
    chunks
        .iter()
        .fold(0u128, |acc, chunk| acc | u128::from_ne_bytes(*chunk))
        == 0
        && tail.iter().all(|byte| *byte == 0)
}

/// Sends the pages set in `bitmaps`; returns (pages, bytes).
fn send_pages(
    stream: &mut impl Write,
    memory: &GuestMemoryMmap,
    bitmaps: &[Vec<u64>],
) -> Result<(u64, u64), MigrationError> {
    let (mut pages, mut bytes) = (0u64, 0u64);
    for ((region, bitmap), index) in memory.iter().zip(bitmaps).zip(0u32..) {
        let mut frame = index.to_le_bytes().to_vec();
        let mut in_frame = 0usize;
        let total = pages_in(region.len());
        for (word_index, &word) in bitmap.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                let page_index = word_index * 64 + bit;
                if page_index >= total {
                    break;
                }
                let offset = page_index as u64 * PAGE_SIZE;
                let len = (region.len() - offset).min(PAGE_SIZE) as usize;
                // Read straight into the frame; a zero page becomes a marker instead.
                let at = frame.len();
                frame.extend_from_slice(&(page_index as u64).to_le_bytes());
                frame.resize(at + 8 + PAGE_BYTES, 0);
                memory
                    .read_slice(
                        &mut frame[at + 8..at + 8 + len],
                        region.start_addr().unchecked_add(offset),
                    )
                    .map_err(|err| MigrationError::State(format!("reading guest memory: {err}")))?;
                if is_zero(&frame[at + 8..]) {
                    frame.truncate(at);
                    frame.extend_from_slice(&(page_index as u64 | ZERO_PAGE).to_le_bytes());
                }
                in_frame += 1;
                pages += 1;
                if in_frame == wire::PAGES_PER_FRAME {
                    bytes += frame.len() as u64 + 9;
                    wire::send(stream, Kind::Pages, &frame)?;
                    frame.truncate(4);
                    in_frame = 0;
                }
            }
        }
        if in_frame > 0 {
            bytes += frame.len() as u64 + 9;
            wire::send(stream, Kind::Pages, &frame)?;
        }
    }
    Ok((pages, bytes))
}

/// Writes a `Pages` frame's pages into `memory`, every index checked.
fn receive_pages(memory: &GuestMemoryMmap, payload: &[u8]) -> Result<(), WireError> {
    let bad = |why: String| WireError::Frame(why);
    let (index, mut rest) = payload
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("a pages frame without its region".into()))?;
    let index = u32::from_le_bytes(*index) as usize;
    let region = memory
        .iter()
        .nth(index)
        .ok_or_else(|| bad(format!("region {index} does not exist")))?;
    let total = pages_in(region.len());
    let mut scratch = vec![0u8; PAGE_BYTES];
    while !rest.is_empty() {
        let (page, mut tail) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| bad("a truncated page index".into()))?;
        let page = u64::from_le_bytes(*page);
        let zero = page & ZERO_PAGE != 0;
        let page = page & !ZERO_PAGE;
        if page >= total as u64 {
            return Err(bad(format!(
                "page {page} is beyond region {index}'s {total} pages"
            )));
        }
        let offset = page * PAGE_SIZE;
        let len = (region.len() - offset).min(PAGE_SIZE) as usize;
        let address = region.start_addr().unchecked_add(offset);
        let data = if zero {
            // Reading a page never written maps the shared zero page; only a page that
            // holds something is written (so an idle guest's memory stays unallocated).
            memory
                .read_slice(&mut scratch[..len], address)
                .map_err(|err| bad(format!("page {page}: {err}")))?;
            if is_zero(&scratch[..len]) {
                rest = tail;
                continue;
            }
            scratch[..len].fill(0);
            &scratch[..len]
        } else {
            let (data, after) = tail
                .split_at_checked(PAGE_BYTES)
                .ok_or_else(|| bad("a truncated page".into()))?;
            tail = after;
            &data[..len]
        };
        memory
            .write_slice(data, address)
            .map_err(|err| bad(format!("page {page}: {err}")))?;
        rest = tail;
    }
    Ok(())
}

/// Sends the VM behind `handle` over `stream` (see the module documentation).
pub(crate) fn send<S: Read + Write>(
    handle: &VmHandle,
    stream: &mut S,
    options: &MigrationOptions,
    progress: &Mutex<Option<MigrationProgress>>,
) -> Result<MigrationReport, MigrationError> {
    let sources = &handle.devices.snapshot;
    let memory = &sources.memory;
    let started = Instant::now();
    let report = |update: &dyn Fn(&mut MigrationProgress)| {
        let mut slot = lock(progress);
        update(slot.get_or_insert_with(MigrationProgress::default));
    };
    report(&|p| {
        *p = MigrationProgress {
            phase: "precopy".into(),
            ..Default::default()
        }
    });
    match handle.state() {
        crate::VmState::Running | crate::VmState::Paused => {}
        state => return Err(MigrationError::State(format!("the VM is {state:?}"))),
    }
    wire::greet(stream)?;
    let hello = Hello {
        keel_version: env!("CARGO_PKG_VERSION").into(),
        config: crate::sync::lock(&sources.config).clone(),
        memory_regions: regions(memory),
    };
    let hello = serde_json::to_vec(&hello).map_err(|err| MigrationError::State(err.to_string()))?;
    wire::send(stream, Kind::Hello, &hello)?;
    wire::expect_greeting(stream)?;
    wire::expect(stream, Kind::Ready)?;

    // Pre-copy with dirty logging on; whatever fails turns it off again.
    crate::vm::set_memory_slots(&sources.vm_fd, memory, true)
        .map_err(|err| MigrationError::State(err.to_string()))?;
    let precopy = precopy(handle, stream, options, &report);
    let was_running = handle.state() == crate::VmState::Running;
    let result = precopy.and_then(|(pending, pages, bytes, rounds)| {
        let paused_at = Instant::now();
        if was_running {
            handle
                .pause()
                .map_err(|err: StateError| MigrationError::State(err.to_string()))?;
        }
        report(&|p| p.phase = "stop-and-copy".into());
        let stop_and_copy = (|| {
            let vcpus = handle
                .control
                .capture_vcpus(crate::state::PAUSE_TIMEOUT)
                .map_err(MigrationError::State)?;
            let ged = lock(&handle.devices.ged).state();
            let snapshot: VmSnapshot = sources.capture(vcpus, ged)?;
            let mut last = take_dirty(&sources.vm_fd, memory)?;
            merge(&mut last, &pending);
            let (more_pages, more_bytes) = send_pages(stream, memory, &last)?;
            let state = serde_json::to_vec(&snapshot)
                .map_err(|err| MigrationError::State(err.to_string()))?;
            Ok::<_, MigrationError>((state, more_pages, more_bytes))
        })();
        let (state, more_pages, more_bytes) = match stop_and_copy {
            Ok(done) => done,
            Err(err) => {
                if was_running {
                    let _ = handle.resume();
                }
                return Err(err);
            }
        };
        if let Err(err) = wire::send(stream, Kind::State, &state) {
            return Err(MigrationError::Unconfirmed(err.to_string()));
        }
        match wire::expect(stream, Kind::Started) {
            Ok(_) => {}
            Err(WireError::Aborted(why)) => {
                if was_running {
                    let _ = handle.resume();
                }
                return Err(MigrationError::Mismatch(why));
            }
            Err(err) => return Err(MigrationError::Unconfirmed(err.to_string())),
        }
        let downtime = paused_at.elapsed();
        // The VM runs on the destination now: this one ends.
        handle.stop();
        Ok(MigrationReport {
            total_ms: started.elapsed().as_secs_f64() * 1e3,
            downtime_ms: downtime.as_secs_f64() * 1e3,
            rounds,
            pages_sent: pages + more_pages,
            bytes_sent: bytes + more_bytes + state.len() as u64,
        })
    });
    if result.is_err() {
        let _ = crate::vm::set_memory_slots(&sources.vm_fd, memory, false);
        if let Err(MigrationError::Wire(err)) = &result {
            // Tell the destination, if it still listens, that the migration is off.
            let _ = wire::send(stream, Kind::Abort, err.to_string().as_bytes());
        }
    }
    report(&|p| {
        p.phase = if result.is_ok() { "done" } else { "failed" }.into();
    });
    result
}

type Precopy = (Vec<Vec<u64>>, u64, u64, u32);
/// Updates the progress a migration shows.
type Report<'a> = &'a dyn Fn(&dyn Fn(&mut MigrationProgress));

/// The pre-copy rounds; returns the pages still to send, pages and bytes sent, rounds.
fn precopy<S: Read + Write>(
    handle: &VmHandle,
    stream: &mut S,
    options: &MigrationOptions,
    report: Report<'_>,
) -> Result<Precopy, MigrationError> {
    let sources = &handle.devices.snapshot;
    let memory = &sources.memory;
    // Clear what was logged before the first full pass.
    take_dirty(&sources.vm_fd, memory)?;
    let send_started = Instant::now();
    let (mut pages, mut bytes) = send_pages(stream, memory, &all_pages(memory))?;
    let mut round = 0u32;
    let mut round_started = Instant::now();
    loop {
        let dirty = take_dirty(&sources.vm_fd, memory)?;
        let dirty_pages = count(&dirty);
        let elapsed = send_started.elapsed().as_secs_f64().max(1e-6);
        let bandwidth = bytes as f64 / elapsed;
        let expected = (dirty_pages * (PAGE_SIZE + 8)) as f64 / bandwidth.max(1.0);
        let rate = dirty_pages as f64 / round_started.elapsed().as_secs_f64().max(1e-6);
        report(&|p| {
            p.round = round;
            p.pages_sent = pages;
            p.bytes_sent = bytes;
            p.dirty_pages = dirty_pages;
            p.dirty_rate = rate;
            p.bandwidth = bandwidth;
            p.expected_downtime_ms = expected * 1e3;
        });
        if expected <= options.downtime.as_secs_f64() || round + 1 >= options.max_rounds {
            return Ok((dirty, pages, bytes, round + 1));
        }
        round += 1;
        round_started = Instant::now();
        let (more_pages, more_bytes) = send_pages(stream, memory, &dirty)?;
        pages += more_pages;
        bytes += more_bytes;
    }
}

/// A migration arriving on a stream: the source's config is known once it is accepted, so a
/// destination can build its config from it (or check its own against it).
pub struct IncomingMigration<S> {
    stream: S,
    hello: Hello,
}

impl<S: Read + Write> IncomingMigration<S> {
    /// Greets the source and reads its config.
    pub fn accept(mut stream: S) -> Result<Self, MigrationError> {
        wire::expect_greeting(&mut stream)?;
        let hello = wire::expect(&mut stream, Kind::Hello)?;
        let hello: Hello = serde_json::from_slice(&hello)
            .map_err(|err| WireError::Frame(format!("hello: {err}")))?;
        Ok(IncomingMigration { stream, hello })
    }

    /// The config the VM runs with on the source.
    pub fn config(&self) -> &VmConfig {
        &self.hello.config
    }

    /// Receives the VM into `builder` (its config must have the source VM's shape; its back
    /// ends may differ), starts it, and confirms to the source. On any failure the source is
    /// told, so it goes on running.
    pub fn receive(mut self, builder: crate::VmBuilder) -> Result<crate::Vm, crate::Error> {
        let result = self.receive_inner(builder);
        if let Err(err) = &result {
            let _ = wire::send(&mut self.stream, Kind::Abort, err.to_string().as_bytes());
        }
        result
    }

    fn receive_inner(&mut self, builder: crate::VmBuilder) -> Result<crate::Vm, crate::Error> {
        // The greeting first, so that whatever follows (an abort too) is read as a frame.
        wire::greet(&mut self.stream).map_err(|err| migration_error(err.into()))?;
        let memory = crate::memory::create_guest_memory(builder.config().memory.as_bytes())?;
        if regions(&memory) != self.hello.memory_regions {
            return Err(migration_error(MigrationError::Mismatch(format!(
                "memory regions {:?} here, {:?} on the source",
                regions(&memory),
                self.hello.memory_regions
            ))));
        }
        wire::send(&mut self.stream, Kind::Ready, &[])
            .map_err(|err| migration_error(err.into()))?;
        let mut payload = Vec::new();
        let state = loop {
            let kind = wire::receive_into(&mut self.stream, &mut payload)
                .map_err(|err| migration_error(err.into()))?;
            match kind {
                Kind::Pages => {
                    receive_pages(&memory, &payload).map_err(|err| migration_error(err.into()))?
                }
                Kind::State => break payload,
                other => {
                    return Err(migration_error(
                        WireError::Frame(format!("unexpected {other:?} frame")).into(),
                    ))
                }
            }
        };
        let snapshot: VmSnapshot = serde_json::from_slice(&state)
            .map_err(|err| migration_error(WireError::Frame(format!("state: {err}")).into()))?;
        let nics: Vec<String> = builder
            .config()
            .nets
            .iter()
            .map(|nic| nic.id.clone())
            .collect();
        let mut vm = builder.restore_migrated(memory, snapshot).build()?;
        vm.start()?;
        wire::send(&mut self.stream, Kind::Started, &[])
            .map_err(|err| migration_error(err.into()))?;
        // Switches learn where the guest is now from its gratuitous announcements.
        let handle = vm.handle();
        for nic in nics {
            if let Err(err) = handle.announce(&nic) {
                log::info!("migration: NIC `{nic}` cannot announce itself: {err}");
            }
        }
        Ok(vm)
    }
}

/// What a destination parses of an incoming stream, without KVM (for the fuzz target): the
/// greeting, the hello, page frames into a 1 MiB guest memory, the state. Returns an error
/// for what it refuses; it must never panic or allocate beyond a frame's limit.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn parse_incoming(stream: &[u8]) -> Result<(), MigrationError> {
    thread_local! {
        static MEMORY: Option<GuestMemoryMmap> = crate::memory::create_guest_memory(1 << 20).ok();
    }
    /// The bytes to read; what the destination would write back is dropped.
    struct Peer<'a>(&'a [u8]);
    impl Read for Peer<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Peer<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let IncomingMigration { mut stream, .. } = IncomingMigration::accept(Peer(stream))?;
    let mut payload = Vec::new();
    loop {
        match wire::receive_into(&mut stream, &mut payload)? {
            Kind::Pages => MEMORY.with(|memory| match memory {
                Some(memory) => receive_pages(memory, &payload),
                None => Ok(()),
            })?,
            Kind::State => {
                let _: VmSnapshot = serde_json::from_slice(&payload)
                    .map_err(|err| WireError::Frame(format!("state: {err}")))?;
                return Ok(());
            }
            other => return Err(WireError::Frame(format!("unexpected {other:?} frame")).into()),
        }
    }
}

fn migration_error(err: MigrationError) -> crate::Error {
    crate::Error::Migration(Box::new(err))
}

/// Exercises the page framing for the tests: pages set in `bitmaps` of `from` end up in `to`.
#[cfg(test)]
fn copy_through_frames(from: &GuestMemoryMmap, to: &GuestMemoryMmap, bitmaps: &[Vec<u64>]) {
    let mut stream = Vec::new();
    send_pages(&mut stream, from, bitmaps).unwrap();
    let mut reader = stream.as_slice();
    while !reader.is_empty() {
        let (kind, payload) = wire::receive(&mut reader).unwrap();
        assert_eq!(kind, Kind::Pages);
        receive_pages(to, &payload).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[cfg(feature = "testing")]
    #[test]
    fn an_incoming_stream_is_parsed_as_far_as_it_is_valid() {
        let frame = |stream: &mut Vec<u8>, kind: Kind, payload: &[u8]| {
            wire::send(stream, kind, payload).unwrap()
        };
        let mut stream = wire::GREETING.to_vec();
        let hello =
            r#"{"keel_version":"0.1.0","config":{"kernel":"k"},"memory_regions":[[0,1048576]]}"#;
        frame(&mut stream, Kind::Hello, hello.as_bytes());
        let mut pages = 0u32.to_le_bytes().to_vec();
        pages.extend_from_slice(&(3u64 | ZERO_PAGE).to_le_bytes());
        frame(&mut stream, Kind::Pages, &pages);
        let good = stream.clone();
        let err = parse_incoming(&good).unwrap_err().to_string();
        assert!(
            err.contains("failed to fill whole buffer") || err.contains("end"),
            "{err}"
        );
        let mut bad = 0u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&(256u64 | ZERO_PAGE).to_le_bytes());
        frame(&mut stream, Kind::Pages, &bad);
        let err = parse_incoming(&stream).unwrap_err().to_string();
        assert!(
            err.contains("page 256 is beyond region 0's 256 pages"),
            "{err}"
        );
        let mut state = good;
        frame(&mut state, Kind::State, b"{}");
        let err = parse_incoming(&state).unwrap_err().to_string();
        assert!(err.contains("state: missing field"), "{err}");
    }

    #[test]
    fn pages_cross_the_stream_and_bad_indexes_are_refused() {
        let from = crate::memory::create_guest_memory(4 << 20).unwrap();
        let to = crate::memory::create_guest_memory(4 << 20).unwrap();
        from.write_slice(b"first page", GuestAddress(0)).unwrap();
        from.write_slice(b"page 700", GuestAddress(700 * PAGE_SIZE))
            .unwrap();
        let mut dirty = vec![vec![0u64; 1024 / 64]];
        dirty[0][0] = 1;
        dirty[0][700 / 64] |= 1 << (700 % 64);
        copy_through_frames(&from, &to, &dirty);
        let mut read = [0u8; 10];
        to.read_slice(&mut read, GuestAddress(0)).unwrap();
        assert_eq!(&read, b"first page");
        to.read_slice(&mut read[..8], GuestAddress(700 * PAGE_SIZE))
            .unwrap();
        assert_eq!(&read[..8], b"page 700");
        // Only the two pages written were ever backed.
        assert_eq!(count(&all_pages(&from)), 2);

        // A page the source has zeroed travels as a marker and zeroes the destination's copy;
        // the marker alone, not 4 KiB.
        from.write_slice(&[0u8; 10], GuestAddress(0)).unwrap();
        let mut stream = Vec::new();
        let (pages, bytes) = send_pages(&mut stream, &from, &[vec![1u64]]).unwrap();
        assert_eq!((pages, stream.len() as u64), (1, bytes));
        assert!(bytes < 64, "a zero page took {bytes} bytes");
        copy_through_frames(&from, &to, &[vec![1u64]]);
        to.read_slice(&mut read, GuestAddress(0)).unwrap();
        assert_eq!(read, [0u8; 10]);
        assert!(is_zero(&[0u8; 4096]) && !is_zero(&[0, 0, 0, 1]));

        let mut bad = 0u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&5000u64.to_le_bytes());
        bad.extend_from_slice(&[0u8; 4096]);
        assert!(receive_pages(&to, &bad).is_err(), "page beyond the region");
        let mut bad = 7u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&0u64.to_le_bytes());
        bad.extend_from_slice(&[0u8; 4096]);
        assert!(receive_pages(&to, &bad).is_err(), "no such region");
        assert!(
            receive_pages(&to, &[0, 0, 0, 0, 1, 2]).is_err(),
            "truncated"
        );
    }
}

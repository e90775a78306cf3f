//! The migration stream: frames of a kind byte, a 64-bit length and a payload, after an
//! 8-byte greeting. Every frame read is checked (kind, length limit) before its payload is
//! read; a peer cannot make the reader allocate more than [`MAX_FRAME`].

use std::io::{Read, Write};

/// Greeting each side sends first (it carries the protocol version).
pub const GREETING: [u8; 8] = *b"KEELMIG1";
/// Largest payload read (a state frame or a batch of pages).
pub const MAX_FRAME: u64 = 64 << 20;
/// Pages per `Pages` frame at most.
pub const PAGES_PER_FRAME: usize = 256;
/// The largest `Pages` frame: its region index, then an index and a page for each page.
const PAGES_FRAME_BYTES: usize = 4 + PAGES_PER_FRAME * (8 + 4096);

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Source → destination: the VM's config and memory layout (JSON).
    Hello = 1,
    /// Destination → source: memory is ready for pages.
    Ready = 2,
    /// Source → destination: a region index (le32), then pages: index (le64) and contents.
    Pages = 3,
    /// Source → destination: the paused VM's state (JSON).
    State = 4,
    /// Destination → source: the VM runs here now.
    Started = 5,
    /// Either way: the migration is off; the payload says why.
    Abort = 6,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::Ready,
            3 => Kind::Pages,
            4 => Kind::State,
            5 => Kind::Started,
            6 => Kind::Abort,
            _ => return None,
        })
    }
}

/// Why the stream could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed.
    #[error("migration stream: {0}")]
    Io(#[from] std::io::Error),
    /// The peer is not a Keel migration peer (or speaks another version).
    #[error("the peer does not speak Keel's migration protocol (greeting {0:?})")]
    Greeting([u8; 8]),
    /// A frame of an unknown kind or over the size limit.
    #[error("malformed migration frame: {0}")]
    Frame(String),
    /// The peer called the migration off.
    #[error("the peer aborted the migration: {0}")]
    Aborted(String),
}

/// Sends the greeting.
pub fn greet(stream: &mut impl Write) -> Result<(), WireError> {
    stream.write_all(&GREETING)?;
    Ok(())
}

/// Reads and checks the peer's greeting.
pub fn expect_greeting(stream: &mut impl Read) -> Result<(), WireError> {
    let mut greeting = [0u8; 8];
    stream.read_exact(&mut greeting)?;
    if greeting != GREETING {
        return Err(WireError::Greeting(greeting));
    }
    Ok(())
}

/// Writes one frame.
pub fn send(stream: &mut impl Write, kind: Kind, payload: &[u8]) -> Result<(), WireError> {
    let mut header = [0u8; 9];
    header[0] = kind as u8;
    header[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    stream.write_all(&header)?;
    stream.write_all(payload)?;
    Ok(())
}

/// Reads one frame. An `Abort` frame becomes [`WireError::Aborted`].
pub fn receive(stream: &mut impl Read) -> Result<(Kind, Vec<u8>), WireError> {
    let mut payload = Vec::new();
    let kind = receive_into(stream, &mut payload)?;
    Ok((kind, payload))
}

/// Reads one frame's payload into `payload` (cleared first, its allocation kept: the page
/// frames of a migration reuse one buffer rather than growing a fresh one each).
pub fn receive_into(stream: &mut impl Read, payload: &mut Vec<u8>) -> Result<Kind, WireError> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header)?;
    let kind = Kind::from_byte(header[0])
        .ok_or_else(|| WireError::Frame(format!("unknown kind {}", header[0])))?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[1..]);
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(WireError::Frame(format!(
            "{len} bytes, the limit is {MAX_FRAME}"
        )));
    }
    payload.clear();
    // At most MAX_FRAME (checked above), and only as much as a page frame needs up front:
    // a larger frame grows as its bytes arrive.
    payload.reserve(
        usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(PAGES_FRAME_BYTES),
    );
    stream.take(len).read_to_end(payload)?;
    if payload.len() as u64 != len {
        return Err(WireError::Frame(format!(
            "{} of {len} bytes before the stream ended",
            payload.len()
        )));
    }
    if kind == Kind::Abort {
        return Err(WireError::Aborted(
            String::from_utf8_lossy(payload).into_owned(),
        ));
    }
    Ok(kind)
}

/// Reads one frame, which must be of `kind`.
pub fn expect(stream: &mut impl Read, kind: Kind) -> Result<Vec<u8>, WireError> {
    let (got, payload) = receive(stream)?;
    if got != kind {
        return Err(WireError::Frame(format!("expected {kind:?}, got {got:?}")));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let mut buffer = Vec::new();
        greet(&mut buffer).unwrap();
        send(&mut buffer, Kind::Hello, b"{}").unwrap();
        send(&mut buffer, Kind::Abort, b"no room").unwrap();
        let mut reader = buffer.as_slice();
        expect_greeting(&mut reader).unwrap();
        assert_eq!(expect(&mut reader, Kind::Hello).unwrap(), b"{}");
        assert!(matches!(receive(&mut reader), Err(WireError::Aborted(why)) if why == "no room"));

        let mut bad = vec![9u8];
        bad.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            receive(&mut bad.as_slice()),
            Err(WireError::Frame(_))
        ));
        let mut huge = vec![Kind::Pages as u8];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            receive(&mut huge.as_slice()),
            Err(WireError::Frame(_))
        ));
        let mut short = vec![Kind::State as u8];
        short.extend_from_slice(&100u64.to_le_bytes());
        short.extend_from_slice(b"only this");
        assert!(matches!(
            receive(&mut short.as_slice()),
            Err(WireError::Frame(_))
        ));
        assert!(matches!(
            expect_greeting(&mut b"SSH-2.0-".as_slice()),
            Err(WireError::Greeting(_))
        ));
    }
}

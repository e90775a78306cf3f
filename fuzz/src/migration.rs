//! What a destination reads from a live-migration stream (a peer on the network): the
//! greeting, framing, the hello's JSON, page frames written into guest memory (every index
//! checked), the state's JSON. Anything must be refused with an error, never a panic, a write
//! outside guest memory or an allocation beyond a frame's limit.

/// Inputs starting with `{` become a hello frame after a valid greeting (so the JSON parser is
/// reached) followed by the rest as frames; `P` starts a valid greeting and hello followed by
/// a pages frame built from the rest (so page indexes are reached); others are a whole stream.
pub fn migration_stream(data: &[u8]) {
    let mut stream = b"KEELMIG1".to_vec();
    match data.first() {
        Some(b'{') => {
            let end = data
                .iter()
                .position(|b| *b == b'}')
                .map_or(data.len(), |i| i + 1);
            frame(&mut stream, 1, &data[..end]);
            stream.extend_from_slice(&data[end..]);
        }
        Some(b'P') => {
            frame(&mut stream, 1, HELLO.as_bytes());
            frame(&mut stream, 3, &data[1..]);
        }
        _ => stream = data.to_vec(),
    }
    let _ = vmm_core::migration::parse_incoming(&stream);
}

/// A hello the parser accepts.
const HELLO: &str =
    r#"{"keel_version":"0.1.0","config":{"kernel":"k"},"memory_regions":[[0,1048576]]}"#;

fn frame(stream: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    stream.push(kind);
    stream.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    stream.extend_from_slice(payload);
}

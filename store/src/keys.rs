//! The key layout of the sled database. Everything lives in sled's default
//! tree under one-byte prefixes, so that one `apply_batch` updates a photo,
//! its indexes and the change log atomically.
//!
//! | key | value |
//! |---|---|
//! | `h` | [`LibraryHeader`](crate::LibraryHeader) (JSON) |
//! | `c` + name | counter, u64 big-endian (`next_id`, `next_vid`, `generation`) |
//! | `p` + id | [`PhotoRecord`](crate::PhotoRecord) (JSON) |
//! | `n` + path | id |
//! | `x` + BLAKE3 hex + id | empty (hash → ids) |
//! | `e` + id | vid (u64 LE) + the embedding (f32 LE) |
//! | `f` + path | [`FailureRecord`](crate::FailureRecord) (JSON) |
//! | `l` + generation + id | change-log entry: 1 = added or changed, 2 = removed |
//!
//! Ids and generations are big-endian so keys sort numerically.

pub(crate) const HEADER: &[u8] = b"h";
pub(crate) const NEXT_ID: &[u8] = b"cnext_id";
pub(crate) const NEXT_VID: &[u8] = b"cnext_vid";
pub(crate) const GENERATION: &[u8] = b"cgeneration";

pub(crate) const PHOTO: u8 = b'p';
pub(crate) const PATH: u8 = b'n';
pub(crate) const HASH: u8 = b'x';
pub(crate) const EMBEDDING: u8 = b'e';
pub(crate) const FAILURE: u8 = b'f';
pub(crate) const LOG: u8 = b'l';

pub(crate) const LOG_UPSERT: u8 = 1;
pub(crate) const LOG_REMOVE: u8 = 2;

pub(crate) fn with_id(prefix: u8, id: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn with_text(prefix: u8, text: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + text.len());
    key.push(prefix);
    key.extend_from_slice(text.as_bytes());
    key
}

pub(crate) fn hash(blake3: &str, id: u64) -> Vec<u8> {
    let mut key = with_text(HASH, blake3);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn log(generation: u64, id: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = LOG;
    key[1..9].copy_from_slice(&generation.to_be_bytes());
    key[9..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The id at the end of a key (the last 8 bytes).
pub(crate) fn trailing_id(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

pub(crate) fn u64_value(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

pub(crate) fn encode_embedding(vid: u64, vector: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 4 * vector.len());
    out.extend_from_slice(&vid.to_le_bytes());
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

pub(crate) fn decode_embedding(value: &[u8]) -> Option<(u64, Vec<f32>)> {
    let vid = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let body = &value[8..];
    if !body.len().is_multiple_of(4) {
        return None;
    }
    let vector = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((vid, vector))
}

//! Owns the byte formats of stored values and of snapshot data, and their checksums. Every stored
//! value is `crc32c (4 B BE) + payload`, where the checksum covers the full engine key followed by
//! the payload: a record copied under the wrong key fails verification too. Pure functions, no
//! IO; decoders never panic on bad input and report what was wrong.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::raft::{ConfState, Entry, EntryKind, HardState, Index, SnapshotMeta, Term};

const CHECKSUM_BYTES: usize = 4;

fn checksum(key: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(key), payload)
}

/// Wraps `payload` as a stored value for `key`.
pub fn seal(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKSUM_BYTES + payload.len());
    out.extend_from_slice(&checksum(key, payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Appends to `out` what [`seal`] returns for the key at `out[key]` and the payload `parts`
/// joined: for encoders that write a record's key and value into one buffer (a storage
/// batch's), the key first.
pub fn seal_into(out: &mut Vec<u8>, key: Range<usize>, parts: &[&[u8]]) {
    let sum = parts.iter().fold(crc32c::crc32c(&out[key]), |sum, part| {
        crc32c::crc32c_append(sum, part)
    });
    out.reserve(CHECKSUM_BYTES + parts.iter().map(|part| part.len()).sum::<usize>());
    out.extend_from_slice(&sum.to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Verifies a stored value for `key` and returns its payload.
pub fn open<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8], String> {
    let Some((stored, payload)) = value.split_first_chunk::<CHECKSUM_BYTES>() else {
        return Err(format!(
            "record of {} bytes is shorter than its checksum",
            value.len()
        ));
    };
    let stored = u32::from_be_bytes(*stored);
    let computed = checksum(key, payload);
    if stored != computed {
        return Err(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    Ok(payload)
}

fn read_u64(bytes: &[u8], at: usize) -> Result<u64, String> {
    let slice = bytes
        .get(at..at + 8)
        .ok_or_else(|| format!("record truncated at byte {at}"))?;
    let array: [u8; 8] = slice.try_into().map_err(|_| "bad u64".to_string())?;
    Ok(u64::from_be_bytes(array))
}

/// Entry value: term (8 B) + kind (1 B) + data. The index lives in the key.
/// Appends to `out` the stored record of `entry` for the key at `out[key]` (see
/// [`seal_into`]): `seal(key, term (8 B BE) + kind (1 B) + data)`. Built in place, the checksum
/// filled in last: one copy of the entry's data (each replica encodes every entry it appends).
pub fn encode_entry_into(out: &mut Vec<u8>, key: Range<usize>, entry: &Entry) {
    let start = out.len();
    out.reserve(CHECKSUM_BYTES + 9 + entry.data.len());
    out.extend_from_slice(&[0; CHECKSUM_BYTES]);
    out.extend_from_slice(&entry.term.to_be_bytes());
    out.push(entry.kind as u8);
    out.extend_from_slice(&entry.data);
    let sum = crc32c::crc32c_append(crc32c::crc32c(&out[key]), &out[start + CHECKSUM_BYTES..]);
    out[start..start + CHECKSUM_BYTES].copy_from_slice(&sum.to_be_bytes());
}

pub fn decode_entry(key: &[u8], index: Index, value: &[u8]) -> Result<Entry, String> {
    let payload = open(key, value)?;
    let term = read_u64(payload, 0)?;
    let kind_byte = *payload.get(8).ok_or("entry record has no kind byte")?;
    let kind =
        EntryKind::from_u8(kind_byte).ok_or_else(|| format!("unknown entry kind {kind_byte}"))?;
    Ok(Entry {
        index,
        term,
        kind,
        data: Bytes::copy_from_slice(&payload[9..]),
    })
}

/// What a hard state record seals.
pub fn hard_state_payload(hard_state: &HardState) -> [u8; 24] {
    let mut payload = [0u8; 24];
    payload[..8].copy_from_slice(&hard_state.term.to_be_bytes());
    payload[8..16].copy_from_slice(&hard_state.vote.to_be_bytes());
    payload[16..].copy_from_slice(&hard_state.commit.to_be_bytes());
    payload
}

pub fn decode_hard_state(key: &[u8], value: &[u8]) -> Result<HardState, String> {
    let payload = exact(open(key, value)?, 24)?;
    Ok(HardState {
        term: read_u64(payload, 0)?,
        vote: read_u64(payload, 8)?,
        commit: read_u64(payload, 16)?,
    })
}

/// What the applied-position record seals: the index and term of the last entry whose effects
/// are in the kv space.
pub fn applied_payload(index: Index, term: Term) -> [u8; 16] {
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&index.to_be_bytes());
    payload[8..].copy_from_slice(&term.to_be_bytes());
    payload
}

pub fn decode_applied(key: &[u8], value: &[u8]) -> Result<(Index, Term), String> {
    let payload = exact(open(key, value)?, 16)?;
    Ok((read_u64(payload, 0)?, read_u64(payload, 8)?))
}

pub fn encode_conf_state(key: &[u8], conf_state: &ConfState) -> Vec<u8> {
    seal(key, &conf_state.encode())
}

pub fn decode_conf_state(key: &[u8], value: &[u8]) -> Result<ConfState, String> {
    ConfState::decode(open(key, value)?).ok_or_else(|| "malformed configuration".to_string())
}

pub fn encode_snapshot_meta(key: &[u8], meta: &SnapshotMeta) -> Vec<u8> {
    let conf = meta.conf_state.encode();
    let mut payload = Vec::with_capacity(16 + conf.len());
    payload.extend_from_slice(&meta.index.to_be_bytes());
    payload.extend_from_slice(&meta.term.to_be_bytes());
    payload.extend_from_slice(&conf);
    seal(key, &payload)
}

pub fn decode_snapshot_meta(key: &[u8], value: &[u8]) -> Result<SnapshotMeta, String> {
    let payload = open(key, value)?;
    let index = read_u64(payload, 0)?;
    let term = read_u64(payload, 8)?;
    let conf_state =
        ConfState::decode(&payload[16..]).ok_or_else(|| "malformed configuration".to_string())?;
    Ok(SnapshotMeta {
        index,
        term,
        conf_state,
    })
}

fn exact(payload: &[u8], length: usize) -> Result<&[u8], String> {
    if payload.len() != length {
        return Err(format!(
            "record payload is {} bytes, expected {length}",
            payload.len()
        ));
    }
    Ok(payload)
}

// Snapshot data: a sequence of frames, each `payload length (4 B BE) + crc32c of payload (4 B BE)
// + payload`, where the payload is a run of `key length (4 B) + user key + value length (4 B) +
// value`. Frames are self-delimiting, so the concatenation of chunks is itself valid data.

const FRAME_HEADER_BYTES: usize = 8;

/// Builds one frame of snapshot data.
#[derive(Default)]
pub struct FrameBuilder {
    payload: BytesMut,
}

impl FrameBuilder {
    pub fn push(&mut self, user_key: &[u8], value: &[u8]) {
        self.payload.put_u32(user_key.len() as u32);
        self.payload.put_slice(user_key);
        self.payload.put_u32(value.len() as u32);
        self.payload.put_slice(value);
    }

    /// The frame size if a pair of these lengths were added.
    pub fn size_with(&self, key_bytes: usize, value_bytes: usize) -> usize {
        FRAME_HEADER_BYTES + self.payload.len() + 8 + key_bytes + value_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    pub fn finish(&mut self) -> Bytes {
        let payload = std::mem::take(&mut self.payload);
        let mut frame = BytesMut::with_capacity(FRAME_HEADER_BYTES + payload.len());
        frame.put_u32(payload.len() as u32);
        frame.put_u32(crc32c::crc32c(&payload));
        frame.put_slice(&payload);
        frame.freeze()
    }
}

/// Decodes snapshot data (one or more whole frames) into `(user key, value)` pairs, calling
/// `visit` for each. Fails on any truncated frame or checksum mismatch before the frame's pairs
/// are visited.
pub fn decode_frames(mut data: &[u8], visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), String> {
    while !data.is_empty() {
        let Some((header, rest)) = data.split_first_chunk::<FRAME_HEADER_BYTES>() else {
            return Err("truncated frame header".to_string());
        };
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let payload = rest.get(..length).ok_or("truncated frame payload")?;
        if crc32c::crc32c(payload) != crc {
            return Err("frame checksum mismatch".to_string());
        }
        decode_pairs(payload, visit)?;
        data = &rest[length..];
    }
    Ok(())
}

fn decode_pairs(mut payload: &[u8], visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), String> {
    fn take<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let (length, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or("truncated pair length")?;
        let length = u32::from_be_bytes(*length) as usize;
        let value = rest.get(..length).ok_or("truncated pair")?;
        *bytes = &rest[length..];
        Ok(value)
    }
    while !payload.is_empty() {
        let key = take(&mut payload)?;
        let value = take(&mut payload)?;
        visit(key, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_entry(key: &[u8], entry: &Entry) -> Vec<u8> {
        let mut out = key.to_vec();
        encode_entry_into(&mut out, 0..key.len(), entry);
        out.split_off(key.len())
    }

    #[test]
    fn entry_round_trips_and_detects_flips() {
        let key = [1u8; 16];
        let entry = Entry {
            index: 5,
            term: 2,
            kind: EntryKind::Normal,
            data: Bytes::from("abc"),
        };
        let mut value = encode_entry(&key, &entry);
        assert_eq!(decode_entry(&key, 5, &value), Ok(entry));
        for at in 0..value.len() {
            value[at] ^= 0x40;
            assert!(
                decode_entry(&key, 5, &value).is_err(),
                "flip at {at} undetected"
            );
            value[at] ^= 0x40;
        }
        assert!(
            decode_entry(&[2u8; 16], 5, &value).is_err(),
            "wrong key undetected"
        );
        assert!(decode_entry(&key, 5, &value[..3]).is_err());
    }

    #[test]
    fn in_place_encoders_write_what_the_allocating_ones_return() {
        let key = [7u8; 16];
        let entry = Entry {
            index: 9,
            term: 3,
            kind: EntryKind::Normal,
            data: Bytes::from("payload"),
        };
        // After unrelated bytes, as in a batch's buffer.
        let mut out = b"earlier".to_vec();
        let key_at = out.len()..out.len() + key.len();
        out.extend_from_slice(&key);
        let value_at = out.len();
        encode_entry_into(&mut out, key_at, &entry);
        let payload = [
            &3u64.to_be_bytes()[..],
            &[EntryKind::Normal as u8],
            b"payload",
        ]
        .concat();
        assert_eq!(&out[value_at..], seal(&key, &payload).as_slice());
        assert_eq!(decode_entry(&key, 9, &out[value_at..]), Ok(entry));
        let value_at = out.len();
        out.extend_from_slice(&key);
        let key_at = value_at..out.len();
        seal_into(&mut out, key_at.clone(), &[b"sea", b"", b"led"]);
        assert_eq!(&out[key_at.end..], seal(&key, b"sealed").as_slice());
        assert_eq!(open(&key, &out[key_at.end..]), Ok(&b"sealed"[..]));
    }

    #[test]
    fn frames_concatenate() {
        let mut builder = FrameBuilder::default();
        builder.push(b"a", b"1");
        let first = builder.finish();
        builder.push(b"b", b"");
        let second = builder.finish();
        let data = [first.as_ref(), second.as_ref()].concat();
        let mut seen = Vec::new();
        decode_frames(&data, &mut |k, v| seen.push((k.to_vec(), v.to_vec()))).unwrap();
        assert_eq!(
            seen,
            vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![])]
        );
        let mut bad = data.clone();
        bad[9] ^= 1;
        assert!(decode_frames(&bad, &mut |_, _| {}).is_err());
        assert!(decode_frames(&data[..data.len() - 1], &mut |_, _| {}).is_err());
    }
}

//! Length-prefixed framing of a byte stream: every frame is a u32 **little-endian** length
//! (body bytes, header excluded) followed by the body.
//!
//! The layout is exactly a flatbuffers "size-prefixed" buffer, so the codecs build a frame in
//! place (header included) and verify it in place; nothing is copied on either side.
//! This module owns the stream state only; it never allocates for a length it has not checked
//! against the maximum, never panics on input, and knows nothing of what the bodies mean.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use super::limits::{DECODER_RETAINED_BYTES_MAX, FRAME_HEADER_BYTES};

/// What can go wrong with framing. Comparable, so tests can match exact errors.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The header announced a body larger than the connection's maximum. Nothing was
    /// allocated for it; the decoder skips the body if the caller keeps feeding it.
    #[error("frame of {length} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { length: usize, max: usize },
    /// A complete frame whose header does not match its length (only from [`frame_body`]).
    #[error("frame header says {header} body bytes but {actual} are present")]
    LengthMismatch { header: usize, actual: usize },
}

/// The 4-byte header of a frame whose body has `body_bytes` bytes.
pub fn frame_header(body_bytes: usize, frame_bytes_max: usize) -> Result<[u8; 4], FrameError> {
    if body_bytes > frame_bytes_max || body_bytes > u32::MAX as usize {
        return Err(FrameError::FrameTooLarge {
            length: body_bytes,
            max: frame_bytes_max,
        });
    }
    Ok((body_bytes as u32).to_le_bytes())
}

/// Appends one frame (header and body) to `out`.
pub fn write_frame(
    out: &mut Vec<u8>,
    body: &[u8],
    frame_bytes_max: usize,
) -> Result<(), FrameError> {
    let header = frame_header(body.len(), frame_bytes_max)?;
    out.reserve(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    Ok(())
}

/// The body of a complete frame (header included), after checking the header against the
/// length and the maximum.
pub fn frame_body(frame: &[u8], frame_bytes_max: usize) -> Result<&[u8], FrameError> {
    let Some((header, body)) = frame.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(FrameError::LengthMismatch {
            header: 0,
            actual: 0,
        });
    };
    let length = u32::from_le_bytes(*header) as usize;
    if length > frame_bytes_max {
        return Err(FrameError::FrameTooLarge {
            length,
            max: frame_bytes_max,
        });
    }
    if length != body.len() {
        return Err(FrameError::LengthMismatch {
            header: length,
            actual: body.len(),
        });
    }
    Ok(body)
}

/// Incremental decoder: feed it the bytes of a stream as they arrive, pull complete frames.
///
/// Usable from any reader: either [`FrameDecoder::feed`] bytes read elsewhere, or read
/// straight into [`FrameDecoder::read_buffer`] and confirm with [`FrameDecoder::filled`].
/// Pull every complete frame ([`FrameDecoder::next_frame`] until `Ok(None)`) before reading
/// more: the buffer then never holds more than one frame plus one read.
///
/// ```
/// use kahuna::proto::frame::{FrameDecoder, write_frame};
/// let mut stream = Vec::new();
/// write_frame(&mut stream, b"hello", 1024).unwrap();
/// let mut decoder = FrameDecoder::new(1024);
/// decoder.feed(&stream[..3]);
/// assert_eq!(decoder.next_frame(), Ok(None));
/// decoder.feed(&stream[3..]);
/// let frame = decoder.next_frame().unwrap().unwrap();
/// assert_eq!(&frame[4..], b"hello");
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    frame_bytes_max: usize,
    /// Body bytes of a refused (too large) frame still to be thrown away as they arrive.
    skip_bytes: usize,
    /// Where the space handed out by the last `read_buffer` starts, until `filled`.
    read_start: Option<usize>,
}

impl FrameDecoder {
    /// A decoder refusing bodies larger than `frame_bytes_max`.
    pub fn new(frame_bytes_max: usize) -> FrameDecoder {
        assert!(
            frame_bytes_max <= u32::MAX as usize,
            "frame_bytes_max {frame_bytes_max} exceeds u32"
        );
        FrameDecoder {
            buffer: BytesMut::new(),
            frame_bytes_max,
            skip_bytes: 0,
            read_start: None,
        }
    }

    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// Bytes received and not yet handed out as frames (or skipped).
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes the buffer has allocated (for tests and metrics: it stays within one frame plus
    /// one read, whatever a header claims).
    pub fn capacity_bytes(&self) -> usize {
        self.buffer.capacity()
    }

    /// True when no partial frame is pending: the stream may end here cleanly.
    pub fn is_at_frame_boundary(&self) -> bool {
        self.buffer.is_empty() && self.skip_bytes == 0
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if let Some(start) = self.read_start.take() {
            self.buffer.truncate(start);
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// A zeroed space of `bytes` bytes at the end of the buffer for a reader to fill; then
    /// call [`FrameDecoder::filled`] with how many it wrote. Zeroing costs a memset per read
    /// and keeps this free of `unsafe`.
    pub fn read_buffer(&mut self, bytes: usize) -> &mut [u8] {
        if let Some(start) = self.read_start.take() {
            // The previous read space was never confirmed: it holds no data.
            self.buffer.truncate(start);
        }
        let start = self.buffer.len();
        self.read_start = Some(start);
        self.buffer.resize(start + bytes, 0);
        &mut self.buffer[start..]
    }

    /// Confirms that the reader wrote `bytes` bytes at the start of the space the last
    /// [`FrameDecoder::read_buffer`] handed out; the rest of that space is dropped.
    ///
    /// Panics without a preceding `read_buffer`, or when `bytes` exceeds its space (caller bugs).
    pub fn filled(&mut self, bytes: usize) {
        let start = self
            .read_start
            .take()
            .expect("filled() without read_buffer()");
        let space = self.buffer.len() - start;
        assert!(
            bytes <= space,
            "filled {bytes} bytes of a {space}-byte read buffer"
        );
        self.buffer.truncate(start + bytes);
    }

    /// The next complete frame, header included (the codecs verify it in place), or `Ok(None)`
    /// when more bytes are needed. After [`FrameError::FrameTooLarge`] the decoder drops that
    /// frame's body as it arrives, so the stream stays in sync for a caller that answers the
    /// error and carries on; a caller that closes the connection simply drops the decoder.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if let Some(start) = self.read_start.take() {
            self.buffer.truncate(start);
        }
        if self.skip_bytes > 0 {
            let skipped = self.skip_bytes.min(self.buffer.len());
            self.buffer.advance(skipped);
            self.skip_bytes -= skipped;
            if self.skip_bytes > 0 {
                return Ok(None);
            }
        }
        let Some(header) = self.buffer.first_chunk::<FRAME_HEADER_BYTES>() else {
            return Ok(None);
        };
        let length = u32::from_le_bytes(*header) as usize;
        if length > self.frame_bytes_max {
            self.buffer.advance(FRAME_HEADER_BYTES);
            self.skip_bytes = length;
            return Err(FrameError::FrameTooLarge {
                length,
                max: self.frame_bytes_max,
            });
        }
        let frame_bytes = FRAME_HEADER_BYTES + length;
        if self.buffer.len() < frame_bytes {
            // The length is checked: reserving now avoids growing by doubling as it arrives.
            self.buffer.reserve(frame_bytes - self.buffer.len());
            return Ok(None);
        }
        let frame = self.buffer.split_to(frame_bytes).freeze();
        if frame_bytes > DECODER_RETAINED_BYTES_MAX
            && self.buffer.len() <= DECODER_RETAINED_BYTES_MAX
        {
            // The frame shares the large allocation; without this the decoder would keep (and
            // reuse) it once the frame is dropped. What follows the frame (pipelined bytes) is
            // small: copy it out.
            self.buffer = BytesMut::from(&self.buffer[..]);
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod retention {
    use super::*;

    fn frame(body_bytes: usize) -> Vec<u8> {
        let mut frame = (body_bytes as u32).to_le_bytes().to_vec();
        frame.resize(FRAME_HEADER_BYTES + body_bytes, 7);
        frame
    }

    #[test]
    fn a_large_frame_does_not_pin_the_decoder_buffer() {
        let mut decoder = FrameDecoder::new(8 << 20);
        decoder.feed(&frame(4 << 20));
        let large = decoder.next_frame().unwrap().expect("a whole frame");
        assert_eq!(large.len(), FRAME_HEADER_BYTES + (4 << 20));
        // The rest of the buffer no longer lives in the frame's allocation (which `split_to`
        // would leave it sharing, and reclaiming once the frame is dropped).
        let frame_end = large.as_ptr().wrapping_add(large.len());
        assert_ne!(decoder.buffer.as_ptr(), frame_end);
        assert!(decoder.buffer.capacity() <= DECODER_RETAINED_BYTES_MAX);
        // Small frames keep reusing the buffer, and decoding goes on as before.
        decoder.feed(&frame(100));
        decoder.feed(&frame(200));
        assert_eq!(
            decoder.next_frame().unwrap().unwrap().len(),
            FRAME_HEADER_BYTES + 100
        );
        assert_eq!(
            decoder.next_frame().unwrap().unwrap().len(),
            FRAME_HEADER_BYTES + 200
        );
        assert_eq!(decoder.next_frame().unwrap(), None);
    }
}

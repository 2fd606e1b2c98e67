//! Reading and writing frames on a connection: the small async steps both directions share.
//! Every read goes through a [`FrameDecoder`] with a maximum, so no header can make us allocate
//! beyond it; every wait for a handshake has a deadline.

use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::ConnectionError;
use crate::proto::frame::FrameDecoder;
use crate::proto::peer::{decode_handshake, Handshake};

/// Largest handshake frame accepted. A handshake is four scalars (under 64 bytes); until it is
/// checked, the peer is unauthenticated and gets no more buffer than this.
pub(crate) const HANDSHAKE_FRAME_BYTES_MAX: usize = 256;

/// Bytes asked of the socket per read: large enough that a full frame of small messages
/// arrives in one or two reads, small enough to keep per connection.
pub(crate) const READ_CHUNK_BYTES: usize = 64 << 10;

/// Sets `TCP_USER_TIMEOUT` on socket `fd`: data unacknowledged (or unsent behind a zero
/// window) for `timeout` makes the kernel drop the connection. `TransportLimits::validate`
/// keeps `timeout` within 1 ms..=u32::MAX ms; the clamp only keeps a 0 (the system's default,
/// i.e. no limit) from ever reaching the kernel.
pub(crate) fn set_unacknowledged_max(fd: RawFd, timeout: Duration) -> std::io::Result<()> {
    let millis = timeout.as_millis().clamp(1, u128::from(u32::MAX)) as libc::c_uint;
    // SAFETY: a socket descriptor the caller owns and a pointer to a live c_uint of the stated
    // size.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&millis as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The next complete frame, `Ok(None)` on a clean end of stream (between frames).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
    chunk: &mut [u8],
) -> Result<Option<Bytes>, ConnectionError> {
    loop {
        // Drain complete frames before reading more: the decoder then holds at most one
        // frame plus one read.
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        let read = reader.read(chunk).await?;
        if read == 0 {
            return if decoder.is_at_frame_boundary() {
                Ok(None)
            } else {
                Err(ConnectionError::Truncated)
            };
        }
        decoder.feed(&chunk[..read]);
    }
}

/// Reads the peer's handshake within `timeout`. Nothing may follow it before we answer (the
/// protocol has each side wait for the other's handshake), so extra bytes are an error.
pub(crate) async fn read_handshake<R: AsyncRead + Unpin>(
    reader: &mut R,
    timeout: Duration,
) -> Result<Handshake, ConnectionError> {
    let read = async {
        let mut decoder = FrameDecoder::new(HANDSHAKE_FRAME_BYTES_MAX);
        let mut chunk = [0_u8; HANDSHAKE_FRAME_BYTES_MAX];
        let frame = read_frame(reader, &mut decoder, &mut chunk)
            .await?
            .ok_or(ConnectionError::HandshakeClosed)?;
        if decoder.buffered_bytes() > 0 {
            return Err(ConnectionError::UnexpectedData);
        }
        Ok(decode_handshake(&frame)?)
    };
    let deadline = async {
        glommio::timer::sleep(timeout).await;
        Err(ConnectionError::HandshakeTimeout(timeout))
    };
    futures_lite::future::or(read, deadline).await
}

/// Writes one whole frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), ConnectionError> {
    writer.write_all(frame).await?;
    Ok(())
}

/// Completes when the peer closes the connection or sends anything: after the handshakes the
/// acceptor never writes, so either way this connection is finished. Lets an idle writer notice
/// a dead peer before it next has something to send.
pub(crate) async fn wait_for_close<R: AsyncRead + Unpin>(reader: &mut R) -> ConnectionError {
    let mut byte = [0_u8; 1];
    match reader.read(&mut byte).await {
        Ok(0) => ConnectionError::Closed,
        Ok(_) => ConnectionError::UnexpectedData,
        Err(error) => ConnectionError::Io(error),
    }
}

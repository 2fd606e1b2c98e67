//! Length-prefixed framing: frames come out whole however the stream is cut, an oversized
//! header is refused before anything is allocated for it, and the stream stays in sync after.

use kahuna::proto::frame::{frame_body, frame_header, write_frame, FrameDecoder, FrameError};
use proptest::prelude::*;

const MAX: usize = 1024;

#[test]
fn the_header_is_a_little_endian_body_length() {
    let mut stream = Vec::new();
    write_frame(&mut stream, b"abc", MAX).unwrap();
    assert_eq!(stream, [3, 0, 0, 0, b'a', b'b', b'c']);
    assert_eq!(frame_body(&stream, MAX), Ok(&b"abc"[..]));
    assert_eq!(
        frame_header(MAX + 1, MAX),
        Err(FrameError::FrameTooLarge {
            length: MAX + 1,
            max: MAX
        })
    );
    assert_eq!(
        frame_body(&stream[..5], MAX),
        Err(FrameError::LengthMismatch {
            header: 3,
            actual: 1
        })
    );
}

#[test]
fn an_oversized_frame_is_refused_before_allocation_and_then_skipped() {
    let mut decoder = FrameDecoder::new(MAX);
    decoder.feed(&u32::MAX.to_le_bytes());
    assert_eq!(
        decoder.next_frame(),
        Err(FrameError::FrameTooLarge {
            length: u32::MAX as usize,
            max: MAX
        })
    );
    assert!(
        decoder.capacity_bytes() < 64,
        "allocated {} bytes",
        decoder.capacity_bytes()
    );

    // A refused frame's body is dropped as it arrives; the next frame comes out intact.
    let mut decoder = FrameDecoder::new(MAX);
    let mut stream = ((MAX + 1) as u32).to_le_bytes().to_vec();
    stream.extend(std::iter::repeat_n(0xee, MAX + 1));
    write_frame(&mut stream, b"next", MAX).unwrap();
    let mut errors = 0;
    let mut frames = Vec::new();
    for piece in stream.chunks(100) {
        decoder.feed(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(FrameError::FrameTooLarge { .. }) => errors += 1,
                Err(error) => panic!("{error}"),
            }
        }
        assert!(
            decoder.capacity_bytes() <= 2 * MAX,
            "buffer grew to {}",
            decoder.capacity_bytes()
        );
    }
    assert_eq!(errors, 1);
    assert_eq!(frames.len(), 1);
    assert_eq!(&frames[0][4..], b"next");
    assert!(decoder.is_at_frame_boundary());
}

#[test]
fn a_reader_can_fill_the_decoder_in_place() {
    let mut stream = Vec::new();
    write_frame(&mut stream, b"hello", MAX).unwrap();
    write_frame(&mut stream, b"", MAX).unwrap();
    let mut reader = &stream[..];
    let mut decoder = FrameDecoder::new(MAX);
    let mut frames = Vec::new();
    while !reader.is_empty() {
        let space = decoder.read_buffer(3);
        let count = std::io::Read::read(&mut reader, space).unwrap();
        decoder.filled(count);
        while let Some(frame) = decoder.next_frame().unwrap() {
            frames.push(frame);
        }
    }
    assert_eq!(frames.len(), 2);
    assert_eq!(&frames[0][4..], b"hello");
    assert_eq!(frames[1].len(), 4);
    assert_eq!(decoder.buffered_bytes(), 0);
}

proptest! {
    #[test]
    fn frames_come_out_whole_however_the_stream_is_cut(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..10),
        cuts in prop::collection::vec(1usize..300, 1..20),
    ) {
        let mut stream = Vec::new();
        for body in &bodies {
            write_frame(&mut stream, body, MAX).unwrap();
        }
        let mut decoder = FrameDecoder::new(MAX);
        let mut received = Vec::new();
        let mut rest = &stream[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*cut).min(rest.len()));
            decoder.feed(piece);
            rest = tail;
            while let Some(frame) = decoder.next_frame().unwrap() {
                received.push(frame_body(&frame, MAX).unwrap().to_vec());
            }
        }
        prop_assert_eq!(received, bodies);
        prop_assert!(decoder.is_at_frame_boundary());
    }

    #[test]
    fn random_streams_never_panic(stream in prop::collection::vec(any::<u8>(), 0..2048), piece in 1usize..64) {
        let mut decoder = FrameDecoder::new(256);
        for bytes in stream.chunks(piece) {
            decoder.feed(bytes);
            while let Ok(Some(frame)) = decoder.next_frame() {
                prop_assert!(frame.len() <= 4 + 256);
            }
            prop_assert!(decoder.capacity_bytes() <= 4096);
        }
    }
}

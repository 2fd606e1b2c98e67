//! Criterion benches of the peer codec (issue 6): encode, and verify + decode, of a 64-message
//! peer frame: 64 appends of one 256-byte entry each, and 64 heartbeats (coalesced and not).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kahuna::proto::peer::{decode_batch, PeerEncoder};
use kahuna::raft::{Entry, EntryKind, Message, MessageBody};
use std::hint::black_box;

const FROM: u64 = 1;
const TO: u64 = 2;

fn appends() -> Vec<Message> {
    (0..64u64)
        .map(|group| Message {
            group,
            from: FROM,
            to: TO,
            term: 7,
            body: MessageBody::Append {
                prev_index: 1000 + group,
                prev_term: 7,
                entries: vec![Entry {
                    index: 1001 + group,
                    term: 7,
                    kind: EntryKind::Normal,
                    data: Bytes::from(vec![0x5a; 256]),
                }],
                commit: 999,
            },
        })
        .collect()
}

fn heartbeats() -> Vec<Message> {
    (0..64u64)
        .map(|group| Message {
            group,
            from: FROM,
            to: TO,
            term: 7,
            body: MessageBody::Heartbeat {
                commit: 1000 + group,
                read_seq: 0,
            },
        })
        .collect()
}

fn bench_frame(c: &mut Criterion, name: &str, messages: &[Message], coalesce: bool) {
    let mut group = c.benchmark_group(format!("peer_frame/{name}"));
    let mut encoder = PeerEncoder::new().with_coalesced_heartbeats(coalesce);
    let frame = encoder
        .encode_batch(FROM, TO, messages)
        .unwrap()
        .frame
        .to_vec();
    println!(
        "peer_frame/{name}: {} messages, {} bytes per frame",
        messages.len(),
        frame.len()
    );
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("encode", |b| {
        b.iter(|| {
            black_box(
                encoder
                    .encode_batch(FROM, TO, black_box(messages))
                    .unwrap()
                    .frame
                    .len(),
            )
        })
    });
    // Decoded batches are dropped outside the timed section (iter_batched_ref): the figure is
    // verification plus building the messages, as the receiver pays it before handing them on.
    group.bench_function("verify_decode", |b| {
        b.iter_batched_ref(
            || (),
            |_| black_box(decode_batch(black_box(&frame)).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_frame(c, "64_appends_256B", &appends(), true);
    bench_frame(c, "64_heartbeats_coalesced", &heartbeats(), true);
    bench_frame(c, "64_heartbeats_plain", &heartbeats(), false);
}

criterion_group!(benches, codec);
criterion_main!(benches);

//! TCP super-packets on any bytes: the cut (`engine::segment`) of any frame at any segment
//! size, encapsulated or not, and the join (`engine::coalesce`) of any run of frames. Neither
//! may panic; every segment the cut writes fits what it said; the join never makes an IP
//! packet longer than its length field can say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podlane_core::engine::coalesce::{Coalescer, Offer};
use podlane_core::engine::segment::Segments;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let mss = u16::from_le_bytes([data[0], data[1]]);
    let encapsulated = data[2] & 1 == 1;
    let rest = &data[3..];
    if let Ok(segments) = Segments::new(rest, encapsulated, mss) {
        let mut out = vec![0u8; 70_000];
        for i in 0..segments.count() {
            let len = segments.write(i, &mut out).expect("room for every segment");
            assert_eq!(len, segments.len_of(i));
        }
    }
    // The same bytes as frames, each behind a two-byte length.
    let mut coalescer = Coalescer::new();
    let mut at = 0;
    while at + 2 <= rest.len() {
        let len = usize::from(u16::from_le_bytes([rest[at], rest[at + 1]])) % 2048;
        let frame = &rest[at + 2..(at + 2 + len).min(rest.len())];
        at += 2 + len;
        loop {
            match coalescer.offer(frame) {
                Offer::Joined => break,
                Offer::Complete | Offer::Alone => {
                    if let Some(taken) = coalescer.take() {
                        assert!(taken.frame.len() <= 14 + 65_535);
                    }
                    break;
                }
                Offer::Mismatch => {
                    let taken = coalescer.take().expect("a packet is open");
                    assert!(taken.frame.len() <= 14 + 65_535);
                }
            }
        }
    }
});

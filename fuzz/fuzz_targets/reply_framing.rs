//! Backend reply measuring: never panics or overflows (nested counts included), is independent of how
//! bytes arrive, never measures a reply past its bound, and measures RESP2 replies exactly as long as
//! the redis-protocol crate's decoder does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slotline::protocol::ReplyScanner;

fn lengths(data: &[u8], step: usize, max: usize) -> (Vec<usize>, bool) {
    let mut scanner = ReplyScanner::new(max);
    let mut out = Vec::new();
    let (mut start, mut avail) = (0, 0);
    loop {
        avail = (avail + step).min(data.len());
        loop {
            match scanner.scan(&data[start..avail]) {
                Ok(Some(len)) => {
                    assert!(len > 0 && start + len <= avail && len <= max);
                    out.push(len);
                    start += len;
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        if avail == data.len() {
            return (out, false);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let step = 1 + data.first().copied().unwrap_or(0) as usize % 5;
    // A tight bound (from the second byte) as well as the default and none at all.
    let tight = 16 + data.get(1).copied().unwrap_or(0) as usize * 4;
    for max in [tight, usize::MAX] {
        let whole = lengths(data, data.len().max(1), max);
        assert_eq!(whole, lengths(data, step, max), "split reads changed the result");
    }
    let whole = lengths(data, data.len().max(1), slotline::protocol::DEFAULT_MAX_REPLY);
    assert_eq!(
        whole,
        lengths(data, step, slotline::protocol::DEFAULT_MAX_REPLY),
        "split reads changed the result"
    );

    // Conservative: a frame with any RESP3 marker byte anywhere (even inside a payload) is skipped.
    let resp2_only = |frame: &[u8]| {
        !frame
            .iter()
            .any(|&b| matches!(b, b'_' | b'#' | b',' | b'(' | b'!' | b'=' | b'~' | b'>' | b'%' | b'|'))
    };
    let mut offset = 0;
    for len in whole.0 {
        let frame = &data[offset..offset + len];
        offset += len;
        // Only compare frames made of RESP2 type markers; the reference's RESP2 decoder rejects the rest.
        if !resp2_only(frame) {
            continue;
        }
        if let Ok(Some((_, used))) = redis_protocol::resp2::decode::decode(frame) {
            assert_eq!(used, len, "reference decoder measured {frame:?} differently");
        }
    }
});

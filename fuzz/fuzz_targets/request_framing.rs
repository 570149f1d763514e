//! Client request framing: never panics, agrees with itself however the bytes are split across reads,
//! and agrees with the redis-protocol crate's decoder on every RESP array it accepts; each argument's
//! bytes as they came (copied into split requests) are its canonical encoding. Before AUTH (the low
//! bit of the second byte), no accepted request passes Redis's limits (10 arguments of 16 KiB), and
//! the parser never asks to wait for more than such a request can hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_protocol::resp2::types::OwnedFrame;
use slotline::command::Request;
use slotline::protocol::{Limits, RequestParser};

/// Each request's length, the bytes its arguments are in (an inline command's RESP encoding),
/// arguments and argument ranges.
/// And whether it came as a RESP array (else an inline line).
type Parsed = Vec<(usize, Vec<u8>, Vec<Vec<u8>>, Vec<(u32, u32)>, bool)>;

/// Parses everything in `data`, feeding it `step` bytes at a time. Returns the complete requests and
/// whether the stream ended in a protocol error.
fn parse(data: &[u8], step: usize, unauthenticated: bool) -> (Parsed, bool) {
    let mut parser = RequestParser::new(Limits { max_request_bytes: 1 << 20 });
    parser.set_unauthenticated(unauthenticated);
    let mut out = Vec::new();
    let mut start = 0;
    let mut avail = 0;
    loop {
        avail = (avail + step).min(data.len());
        loop {
            let buf = &data[start..avail];
            match parser.parse(buf) {
                Ok(Some(len)) => {
                    assert!(len > 0 && len <= buf.len());
                    let frame = parser.frame(&buf[..len]);
                    let args = parser
                        .args()
                        .iter()
                        .map(|&(s, e)| {
                            assert!(s <= e && e as usize <= frame.len());
                            frame[s as usize..e as usize].to_vec()
                        })
                        .collect();
                    let array = buf.first() == Some(&b'*');
                    out.push((len, frame.to_vec(), args, parser.args().to_vec(), array));
                    start += len;
                }
                Ok(None) => {
                    if unauthenticated {
                        // Nothing is waited for (and no buffer grown) past what 10 arguments of
                        // 16 KiB, with their headers, can take.
                        assert!(parser.needed() <= UNAUTHENTICATED_MAX, "{}", parser.needed());
                    }
                    break;
                }
                Err(_) => return (out, true),
            }
        }
        if avail == data.len() {
            return (out, false);
        }
    }
}

/// The largest request an unauthenticated client can send: `*10`, then ten `$16384` arguments.
const UNAUTHENTICATED_MAX: usize = 5 + 10 * (8 + 16384 + 2);

fuzz_target!(|data: &[u8]| {
    let unauthenticated = data.get(1).is_some_and(|b| b & 1 == 1);
    let (whole, whole_err) = parse(data, data.len().max(1), unauthenticated);
    let step = 1 + data.first().copied().unwrap_or(0) as usize % 7;
    let (pieces, pieces_err) = parse(data, step, unauthenticated);
    assert_eq!(whole, pieces, "split reads changed the result");
    assert_eq!(whole_err, pieces_err);

    for (_, frame, args, ranges, array) in &whole {
        if args.is_empty() {
            continue;
        }
        // (An inline line, at most 64 KiB, is not limited further: nor is it in Redis.)
        if unauthenticated && *array {
            assert!(args.len() <= 10 && args.iter().all(|a| a.len() <= 16384));
        }
        // An accepted array, or the array an inline command was encoded as, must be exactly what
        // the reference decoder reads.
        let frame = &frame[..];
        let decoded = redis_protocol::resp2::decode::decode(frame);
        let Ok(Some((OwnedFrame::Array(items), used))) = decoded else {
            panic!("reference decoder disagrees on {frame:?}: {decoded:?}");
        };
        assert_eq!(used, frame.len());
        let items: Vec<Vec<u8>> = items
            .into_iter()
            .map(|f| match f {
                OwnedFrame::BulkString(b) => b,
                other => panic!("not a bulk string: {other:?}"),
            })
            .collect();
        assert_eq!(&items, args);
        let request = Request { frame, args: ranges };
        for (i, arg) in args.iter().enumerate() {
            let mut canonical = format!("${}\r\n", arg.len()).into_bytes();
            canonical.extend_from_slice(arg);
            canonical.extend_from_slice(b"\r\n");
            assert_eq!(request.raw_arg(i), Some(&canonical[..]), "argument {i} of {frame:?}");
        }
    }
});

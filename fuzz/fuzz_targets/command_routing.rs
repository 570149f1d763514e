//! From bytes to a routing decision: parse a request, look the command up, check arity, find its keys
//! and their slots. Nothing a client sends may panic, and key positions stay inside the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slotline::command::{self, Request};
use slotline::protocol::{Limits, RequestParser};
use slotline::route::{key_slot, SLOTS};

fuzz_target!(|data: &[u8]| {
    let mut parser = RequestParser::new(Limits { max_request_bytes: 1 << 20 });
    let mut rest = data;
    while let Ok(Some(len)) = parser.parse(rest) {
        let req = Request { frame: parser.frame(&rest[..len]), args: parser.args() };
        if req.argc() > 0 {
            let sub = (req.argc() > 1).then(|| req.arg(1));
            if let Ok(spec) = command::lookup(req.arg(0), sub) {
                let _ = spec.arity_ok(req.argc());
                let mut keys = 0;
                command::for_each_key(spec, req.argc(), |i| req.arg(i), |i| {
                    assert!(i > 0 && i < req.argc(), "key position {i} outside the request");
                    assert!(key_slot(req.arg(i)).index() < SLOTS);
                    keys += 1;
                });
                assert!(keys <= req.argc());
            }
        }
        rest = &rest[len..];
    }
});

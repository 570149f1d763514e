//! The per-request CPU cost of the data path, without I/O: cutting requests out of a pipelined buffer,
//! looking up the command, finding its key slot; and measuring replies on the backend side.

use bytes::{BufMut, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use slotline::command::{self, Request};
use slotline::protocol::{Limits, ReplyScanner, RequestParser};
use slotline::route::key_slot;

fn pipeline(n: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..n {
        let key = format!("key:{i:08}");
        if i % 2 == 0 {
            buf.put_slice(
                format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$3\r\nxxx\r\n",
                    key.len()
                )
                .as_bytes(),
            );
        } else {
            buf.put_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes());
        }
    }
    buf
}

fn cut_and_route(c: &mut Criterion) {
    const N: usize = 1000;
    let input = pipeline(N);
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("cut+lookup+slot", |b| {
        let mut parser = RequestParser::new(Limits::default());
        b.iter(|| {
            let mut buf = input.clone();
            let mut slots = 0u32;
            while let Some(len) = parser.parse(&buf).unwrap() {
                let raw = buf.split_to(len);
                let req = Request {
                    frame: parser.frame(&raw),
                    args: parser.args(),
                };
                let spec = command::lookup(req.arg(0), None).unwrap();
                req.for_each_key(spec, |k| slots += key_slot(k).get() as u32);
            }
            black_box(slots)
        })
    });
    group.finish();
}

fn scan_replies(c: &mut Criterion) {
    const N: usize = 1000;
    let mut input = BytesMut::new();
    for i in 0..N {
        if i % 2 == 0 {
            input.put_slice(b"+OK\r\n");
        } else {
            input.put_slice(b"$16\r\nvalue-of-the-key\r\n");
        }
    }
    input.put_slice(b"*3\r\n$1\r\na\r\n:1\r\n*1\r\n$-1\r\n");
    let mut group = c.benchmark_group("reply");
    group.throughput(Throughput::Elements(N as u64 + 1));
    group.bench_function("scan", |b| {
        let mut scanner = ReplyScanner::default();
        b.iter(|| {
            let mut buf = input.clone();
            let mut n = 0;
            while let Some(len) = scanner.scan(&buf).unwrap() {
                black_box(buf.split_to(len).freeze());
                n += 1;
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, cut_and_route, scan_replies);
criterion_main!(benches);

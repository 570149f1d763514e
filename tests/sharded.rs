//! Sharded pools through the real slotline binary: keys written through slotline land on exactly the
//! server the real nutcracker puts them on, given the same server lines.

mod support;

use std::collections::HashMap;

use support::{encode, free_port, parse, Nutcracker, RedisServers, Reply, Slotline};

const SERVERS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];

fn server_lines(servers: &RedisServers, weights: [u32; 4]) -> String {
    (0..servers.len())
        .map(|i| {
            format!(
                "      - 127.0.0.1:{}:{} {}\n",
                servers.port(i),
                weights[i],
                SERVERS[i]
            )
        })
        .collect()
}

fn keys(prefix: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut key = format!("{prefix}{i}:").into_bytes();
            match i % 4 {
                0 => key.extend_from_slice(b"plain"),
                1 => key.extend_from_slice(&[0, b'\r', b'\n', 0xff, 0x80]),
                2 => key.extend_from_slice(format!("{{tag{}}}", i % 9).as_bytes()),
                _ => key.extend_from_slice("ünïcødé".as_bytes()),
            }
            key
        })
        .collect()
}

/// Which server (by index) holds each key.
fn placement(servers: &RedisServers, prefix: &str, keys: &[Vec<u8>]) -> Vec<usize> {
    let mut at = HashMap::new();
    for i in 0..servers.len() {
        for key in servers.keys(i, format!("{prefix}*").as_bytes()) {
            assert!(
                at.insert(key.clone(), i).is_none(),
                "{key:?} on two servers"
            );
        }
    }
    keys.iter()
        .map(|k| *at.get(k).unwrap_or_else(|| panic!("{k:?} is on no server")))
        .collect()
}

fn flush(servers: &RedisServers) {
    for i in 0..servers.len() {
        assert!(servers.client(i).cmd(&["FLUSHALL"]).is_ok());
    }
}

/// How slotline is configured: its own format, or the very nutcracker.yml nutcracker runs.
enum Format {
    Native,
    Nutcracker,
}

fn nutcracker_yml(port: u16, mode: &str, hash: &str, lines: &str) -> String {
    format!(
        "pool:\n  listen: 127.0.0.1:{port}\n  hash: {hash}\n  hash_tag: \"{{}}\"\n  distribution: {mode}\n  redis: true\n  servers:\n{lines}"
    )
}

fn same_placement_as_nutcracker(mode: &str, hash: &str, weights: [u32; 4], format: Format) {
    let servers = RedisServers::start(4);
    let lines = server_lines(&servers, weights);
    let keys = keys("k:", 2000);
    let sets: Vec<[&[u8]; 3]> = keys.iter().map(|k| [&b"SET"[..], k, k]).collect();

    let port = free_port();
    let proxy = Slotline::start(&match format {
        Format::Native => format!(
            "pools:\n  shards:\n    listen: 127.0.0.1:{port}\n    mode: {mode}\n    hash: {hash}\n    hash_tag: \"{{}}\"\n    servers:\n{lines}"
        ),
        Format::Nutcracker => nutcracker_yml(port, mode, hash, &lines),
    });
    let mut client = proxy.client();
    assert!(
        client.pipeline(&sets).iter().all(Reply::is_ok),
        "SET through slotline"
    );
    let gets: Vec<[&[u8]; 2]> = keys.iter().map(|k| [&b"GET"[..], k]).collect();
    for (key, reply) in keys.iter().zip(client.pipeline(&gets)) {
        assert_eq!(reply, Reply::bulk(key), "GET {key:?} through slotline");
    }
    let ours = placement(&servers, "k:", &keys);
    flush(&servers);

    let nut_port = free_port();
    let nutcracker = Nutcracker::start(&nutcracker_yml(nut_port, mode, hash, &lines), nut_port);
    assert!(
        nutcracker.client().pipeline(&sets).iter().all(Reply::is_ok),
        "SET through nutcracker"
    );
    let theirs = placement(&servers, "k:", &keys);
    let moved = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
    assert_eq!(
        moved,
        0,
        "{moved} of {} keys placed differently from nutcracker",
        keys.len()
    );
    assert!(
        ours.iter().any(|&s| s != ours[0]),
        "every key on one server: the test proves nothing"
    );
}

#[test]
fn ketama_pool_places_keys_like_nutcracker() {
    same_placement_as_nutcracker("ketama", "fnv1a_64", [1, 1, 2, 1], Format::Native);
}

#[test]
fn modula_pool_from_an_unchanged_nutcracker_yml_places_keys_like_nutcracker() {
    same_placement_as_nutcracker("modula", "murmur", [1, 3, 1, 1], Format::Nutcracker);
}

#[test]
fn multi_key_commands_must_stay_on_one_server() {
    let servers = RedisServers::start(4);
    let port = free_port();
    let proxy = Slotline::start(&format!(
        "pools:\n  shards:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    hash_tag: \"{{}}\"\n    servers:\n{}",
        server_lines(&servers, [1; 4])
    ));
    let mut client = proxy.client();
    assert!(client.cmd(&["MSET", "{u1}a", "1", "{u1}b", "2"]).is_ok());
    assert_eq!(
        client.cmd(&["MGET", "{u1}a", "{u1}b"]),
        Reply::Array(Some(vec![Reply::bulk("1"), Reply::bulk("2")]))
    );
    // Find two keys on different servers, as slotline places them.
    let spread = (0..100).map(|i| format!("spread:{i}")).find(|k| {
        matches!(
            client.cmd(&["SMOVE", "spread:0", k.as_str(), "m"]),
            Reply::Error(_)
        )
    });
    let other = spread.expect("some key lives on another server than spread:0");
    let reply = client.cmd(&["SINTERSTORE", "spread:0", &other]);
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("CROSSSLOT") && e.contains("SINTERSTORE")),
        "{reply:?}"
    );
    assert_eq!(client.cmd(&["SELECT", "0"]), Reply::ok());
    assert!(client
        .cmd(&["INFO", "slotline"])
        .as_bytes()
        .is_some_and(|b| String::from_utf8_lossy(b).contains("mode:ketama")));
}

/// Three servers behind a ketama pool (`extra`: more of its YAML), and `count` keys named from
/// `prefix` set through it to their own names, with the server each landed on.
fn keys_over_three_servers(
    prefix: &str,
    count: usize,
    extra: &str,
) -> (RedisServers, Slotline, Vec<Vec<u8>>, Vec<usize>) {
    let servers = RedisServers::start(3);
    let proxy = Slotline::start(&servers.ketama_yaml(free_port(), extra));
    let mut client = proxy.client();
    let keys = keys(prefix, count);
    for key in &keys {
        assert!(client.cmd(&[&b"SET"[..], key, key]).is_ok());
    }
    let on = placement(&servers, prefix, &keys);
    (servers, proxy, keys, on)
}

/// The replies of a pipeline's fast servers wait for a slow one's (one write for the batch), but
/// they are still the replies: when the slow server's request times out, the others are answered
/// with what their servers said, and only the late one with the timeout.
#[test]
fn a_server_that_does_not_answer_in_time_fails_only_its_own_requests_of_a_pipeline() {
    let (servers, proxy, keys, on) = keys_over_three_servers("late:", 24, "    timeout: 300\n");
    let mut client = proxy.client();
    let paused = on[1];
    let (fast, slow): (Vec<usize>, Vec<usize>) = (0..keys.len()).partition(|&i| on[i] != paused);
    // A fast server's key, the paused server's, then the fast ones': one read, three servers.
    let order: Vec<usize> = [fast[0], slow[0]]
        .into_iter()
        .chain(fast[1..].iter().copied())
        .collect();
    let mut pauser = servers.client(paused);
    assert!(pauser.cmd(&["CLIENT", "PAUSE", "1500", "ALL"]).is_ok());
    let gets: Vec<[&[u8]; 2]> = order.iter().map(|&i| [&b"GET"[..], &keys[i]]).collect();
    let replies = client.pipeline(&gets);
    assert!(pauser.cmd(&["CLIENT", "UNPAUSE"]).is_ok());
    for (&i, reply) in order.iter().zip(&replies) {
        match i == slow[0] {
            true => assert_eq!(
                reply.error(),
                Some("ERR slotline: no reply from the backend within 300 ms"),
                "the paused server's key"
            ),
            false => assert_eq!(
                *reply,
                Reply::bulk(&keys[i]),
                "key {i}, on a server that answered"
            ),
        }
    }
}

/// Redis answers the requests of one read in one write; so does slotline when they are spread
/// over several servers, whose replies come back at different moments. The client's first read
/// after sending a pipeline finds every reply of it (a write that was split would not be).
#[test]
fn a_pipeline_over_every_server_is_answered_in_one_write() {
    use std::io::{Read, Write};
    let (_servers, proxy, keys, on) = keys_over_three_servers("batch:", 16, "");
    assert!(
        (0..3).all(|server| on.contains(&server)),
        "the keys should be spread over all three servers: {on:?}"
    );
    let pipeline: Vec<u8> = keys
        .iter()
        .flat_map(|key| encode(&[&b"GET"[..], key]))
        .collect();
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    raw.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = vec![0; 64 * 1024];
    for round in 0..50 {
        raw.write_all(&pipeline).expect("send the pipeline");
        let n = raw.read(&mut buf).expect("read the replies");
        // Every reply, whole, in the bytes of that one read, and nothing else.
        let mut read = &buf[..n];
        for (i, key) in keys.iter().enumerate() {
            match parse(read) {
                Ok(Some((reply, used))) => {
                    assert_eq!(reply, Reply::bulk(key), "round {round}, reply {i}");
                    read = &read[used..];
                }
                other => panic!(
                    "round {round}: the first read ({n} bytes) ends before reply {i}: {other:?}"
                ),
            }
        }
        assert!(read.is_empty(), "round {round}: bytes after the last reply");
    }
}

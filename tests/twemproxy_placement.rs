//! twemproxy placement, checked against twemproxy itself: keys written through the real `nutcracker`
//! land on real redis-servers, and slotline's library (`slotline::route`) must name the same server
//! for every key; then the same nutcracker.yml runs in the slotline binary, whose writes must land on
//! the same servers. Plain, binary, non-ASCII, long and hash-tagged keys; unnamed, named, weighted,
//! unsorted, unix-socket and ejected servers; every hash with ketama and modula; random.
//!
//! The 25 redis-servers are shared; each check writes its keys under its own prefix and reads back
//! only those.

mod support;

use std::collections::HashMap;
use std::sync::OnceLock;

use slotline::route::{Distribution, DistributionKind, Hash, ServerLine};
use support::{free_port, Client, Nutcracker, RedisServers, Reply, Slotline};

fn servers() -> &'static RedisServers {
    static SERVERS: OnceLock<RedisServers> = OnceLock::new();
    SERVERS.get_or_init(|| RedisServers::start(25))
}

/// One twemproxy pool to check.
struct Pool {
    /// Unique per check, free of KEYS glob characters: every key written starts with it.
    prefix: String,
    /// `None` leaves the line out of the YAML: twemproxy's defaults are fnv1a_64 and ketama.
    hash: Option<&'static str>,
    distribution: Option<&'static str>,
    hash_tag: Option<&'static str>,
    /// Server lines, each with the index of the shared server it points at (`None`: nothing listens).
    servers: Vec<(String, Option<usize>)>,
    /// More pool settings, as YAML lines.
    extra: String,
    keys: usize,
}

impl Pool {
    fn new(prefix: &str, hash: &'static str, distribution: &'static str) -> Pool {
        Pool {
            prefix: prefix.to_string(),
            hash: Some(hash),
            distribution: Some(distribution),
            hash_tag: None,
            servers: Vec::new(),
            extra: String::new(),
            keys: 2000,
        }
    }

    /// Servers `127.0.0.1:PORT:WEIGHT`, optionally named, on the given shared servers.
    fn tcp(mut self, backends: &[usize], weights: &[u32], names: Option<&[&str]>) -> Pool {
        for (i, &backend) in backends.iter().enumerate() {
            let mut line = format!("127.0.0.1:{}:{}", servers().port(backend), weights[i]);
            if let Some(names) = names {
                line = format!("{line} {}", names[i]);
            }
            self.servers.push((line, Some(backend)));
        }
        self
    }

    fn yaml(&self, port: u16) -> String {
        let mut yaml = format!("placement:\n  listen: 127.0.0.1:{port}\n  redis: true\n");
        if let Some(hash) = self.hash {
            yaml.push_str(&format!("  hash: {hash}\n"));
        }
        if let Some(distribution) = self.distribution {
            yaml.push_str(&format!("  distribution: {distribution}\n"));
        }
        if let Some(tag) = self.hash_tag {
            yaml.push_str(&format!("  hash_tag: \"{tag}\"\n"));
        }
        yaml.push_str(&self.extra);
        yaml.push_str("  servers:\n");
        for (line, _) in &self.servers {
            yaml.push_str(&format!("   - {line}\n"));
        }
        yaml
    }

    /// Where slotline's library puts each key (positions in `servers`), with only `live` servers.
    fn slotline_placement(&self, keys: &[Vec<u8>], live: &[bool]) -> Vec<usize> {
        let specs: Vec<_> = self
            .servers
            .iter()
            .map(|(line, _)| ServerLine::parse(line).expect("server line").spec())
            .collect();
        let kind: DistributionKind = self.distribution.unwrap_or("ketama").parse().unwrap();
        let distribution = Distribution::new(kind, &specs)
            .and_then(|d| d.with_live(live))
            .expect("distribution");
        let hash: Hash = self.hash.unwrap_or("fnv1a_64").parse().unwrap();
        let tag = self
            .hash_tag
            .map(|t| <[u8; 2]>::try_from(t.as_bytes()).expect("two-byte tag"));
        keys.iter()
            .map(|key| distribution.server_for_key(hash, tag, key))
            .collect()
    }
}

/// Keys of many shapes under `prefix`: plain, binary (NUL, CR, LF, bytes >= 0x80), non-ASCII, long,
/// with `{tags}` (empty, unclosed, with high bytes) and `[tags]`.
fn test_keys(prefix: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut key = prefix.as_bytes().to_vec();
            match i % 8 {
                0 => key.extend_from_slice(format!("user:{i}").as_bytes()),
                1 => {
                    key.extend_from_slice(format!("bin:{i}:").as_bytes());
                    key.extend_from_slice(&[0, b'\r', b'\n', 0xff, 0x80, b' ', (i % 256) as u8]);
                }
                2 => key.extend_from_slice(format!("{{user{}}}:{i}", i % 50).as_bytes()),
                3 => key.extend_from_slice(format!("ünïcødé-{i}-été").as_bytes()),
                4 => key.extend_from_slice(format!("{{}}{i}{{x{}}}", i % 7).as_bytes()),
                5 => {
                    key.extend_from_slice(b"{\xe9\xff");
                    key.extend_from_slice(format!("{}}}:{i}", i % 13).as_bytes());
                }
                6 => key.extend_from_slice(format!("arr[{}]:{i}{{open", i % 9).as_bytes()),
                _ => key.extend_from_slice(format!("long:{i}:{}", "x".repeat(i % 300)).as_bytes()),
            }
            key
        })
        .collect()
}

/// Writes `SET key key` for every key through a proxy.
fn write_through(mut client: Client, keys: &[Vec<u8>], proxy: &str) {
    let commands: Vec<[&[u8]; 3]> = keys.iter().map(|k| [&b"SET"[..], k, k]).collect();
    let replies = client.pipeline(&commands);
    for (key, reply) in keys.iter().zip(&replies) {
        assert!(reply.is_ok(), "SET {key:?} through {proxy}: {reply:?}");
    }
}

/// For each key, the position in `pool.servers` of the backend that holds it.
fn nutcracker_placement(pool: &Pool, keys: &[Vec<u8>]) -> Vec<usize> {
    let pattern = format!("{}*", pool.prefix);
    let mut found: HashMap<Vec<u8>, usize> = HashMap::new();
    for (position, (line, backend)) in pool.servers.iter().enumerate() {
        let Some(backend) = *backend else { continue };
        for key in servers().keys(backend, pattern.as_bytes()) {
            if let Some(other) = found.insert(key.clone(), position) {
                panic!("{key:?} is on both {line} and {}", pool.servers[other].0);
            }
        }
    }
    assert_eq!(found.len(), keys.len(), "keys found on the backends");
    keys.iter()
        .map(|k| {
            *found
                .get(k)
                .unwrap_or_else(|| panic!("{k:?} is on no backend"))
        })
        .collect()
}

#[track_caller]
fn assert_same_placement(pool: &Pool, keys: &[Vec<u8>], actual: &[usize], live: &[bool]) {
    let expected = pool.slotline_placement(keys, live);
    let wrong: Vec<String> = keys
        .iter()
        .zip(actual.iter().zip(&expected))
        .filter(|(_, (a, e))| a != e)
        .map(|(key, (&a, &e))| {
            format!(
                "{:?}: nutcracker {}, slotline {}",
                String::from_utf8_lossy(key),
                pool.servers[a].0,
                pool.servers[e].0
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} keys placed differently from nutcracker with\n{}\nfirst ones:\n{}",
        wrong.len(),
        keys.len(),
        pool.yaml(0),
        wrong[..wrong.len().min(5)].join("\n")
    );
}

/// Runs `pool` in nutcracker, writes its keys, and checks every key's server; then runs the very same
/// file in the slotline binary and checks that its keys land on the same servers too.
fn check(pool: &Pool) {
    let port = free_port();
    let nutcracker = Nutcracker::start(&pool.yaml(port), port);
    let keys = test_keys(&pool.prefix, pool.keys);
    write_through(nutcracker.client(), &keys, "nutcracker");
    let actual = nutcracker_placement(pool, &keys);
    assert_same_placement(pool, &keys, &actual, &vec![true; pool.servers.len()]);

    delete_through(nutcracker.client(), &keys);
    let port = free_port();
    let proxy = Slotline::start(&pool.yaml(port));
    write_through(proxy.client(), &keys, "slotline");
    let through_slotline = nutcracker_placement(pool, &keys);
    let moved = actual
        .iter()
        .zip(&through_slotline)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        moved,
        0,
        "keys placed differently by the slotline binary with\n{}",
        pool.yaml(port)
    );
    delete_through(proxy.client(), &keys);
}

fn delete_through(mut client: Client, keys: &[Vec<u8>]) {
    let commands: Vec<[&[u8]; 2]> = keys.iter().map(|k| [&b"DEL"[..], k]).collect();
    for (key, reply) in keys.iter().zip(client.pipeline(&commands)) {
        assert_eq!(reply, Reply::Int(1), "DEL {key:?}");
    }
}

#[test]
fn ketama_with_twemproxy_defaults_and_unnamed_servers() {
    let mut pool = Pool::new("defaults:", "", "").tcp(&[0, 1, 2], &[1, 1, 1], None);
    (pool.hash, pool.distribution) = (None, None);
    check(&pool);
}

#[test]
fn ketama_with_named_servers_in_unsorted_order() {
    let names = ["shard-c", "a", "shard-b", "zz", "shard-aa"];
    check(&Pool::new("named:", "md5", "ketama").tcp(&[3, 4, 5, 6, 7], &[1; 5], Some(&names)));
}

#[test]
fn ketama_with_unequal_weights_and_a_port_written_with_a_leading_zero() {
    let mut pool =
        Pool::new("weights:", "murmur", "ketama").tcp(&[11, 8, 10, 9], &[1, 2, 5, 3], None);
    // The name twemproxy hashes keeps the port as written.
    pool.servers[1].0 = format!("127.0.0.1:0{}:2", servers().port(8));
    check(&pool);
}

#[test]
fn ketama_with_25_servers_of_156_points() {
    let all: Vec<usize> = (0..25).collect();
    let mut pool = Pool::new("pool25:", "fnv1a_64", "ketama").tcp(&all, &[1; 25], None);
    pool.keys = 5000;
    check(&pool);
}

#[test]
fn modula_numbers_servers_by_sorted_name_and_repeats_them_by_weight() {
    let pool = Pool::new("modula:", "crc32a", "modula");
    check(&pool.tcp(&[15, 12, 14, 13], &[1, 3, 2, 1], None));
    let names = ["bb", "a", "ab", "c"];
    let pool = Pool::new("modula-named:", "one_at_a_time", "modula");
    check(&pool.tcp(&[16, 17, 18, 19], &[2, 1, 1, 3], Some(&names)));
}

#[test]
fn hash_tags() {
    let mut pool = Pool::new("tag-braces:", "hsieh", "ketama").tcp(&[20, 21, 22], &[1, 1, 1], None);
    pool.hash_tag = Some("{}");
    check(&pool);
    let mut pool =
        Pool::new("tag-brackets:", "jenkins", "modula").tcp(&[20, 21, 22], &[1, 2, 1], None);
    pool.hash_tag = Some("[]");
    check(&pool);
}

#[test]
fn every_hash_with_ketama_and_with_modula() {
    for hash in Hash::ALL {
        let pool = Pool::new(&format!("all-ketama-{hash}:"), hash.name(), "ketama");
        let mut pool = pool.tcp(&[0, 5, 10, 15, 20], &[1, 1, 2, 1, 1], None);
        pool.keys = 1200;
        check(&pool);

        let pool = Pool::new(&format!("all-modula-{hash}:"), hash.name(), "modula");
        let mut pool = pool.tcp(&[1, 6, 11, 16], &[1, 1, 2, 1], None);
        pool.hash_tag = Some("{}");
        pool.keys = 1200;
        check(&pool);
    }
}

#[test]
fn unix_socket_servers_hash_their_path_and_colon() {
    let mut pool = Pool::new("unix:", "crc16", "ketama");
    for backend in [2, 3, 4] {
        let line = format!("{}:1", servers().socket(backend).display());
        pool.servers.push((line, Some(backend)));
    }
    check(&pool);
}

#[test]
fn long_names_are_cut_to_272_bytes_and_ties_go_to_the_first_name() {
    // 270 bytes: "name-10" and up are cut to "name-1", "name-2", "name-3".
    let names = ["a".repeat(270), "b".repeat(270)];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    check(&Pool::new("long-names:", "fnv1_32", "ketama").tcp(&[23, 24], &[1, 1], Some(&names)));
    // Two names equal in their first 272 bytes put all their points on the same values; twemproxy's
    // (stable) sort keeps the server it numbers first, the one whose name sorts first, ahead.
    let long = "x".repeat(280);
    let names = [
        format!("{long}b"),
        "shard-c".to_string(),
        format!("{long}a"),
    ];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    check(&Pool::new("tied-names:", "md5", "ketama").tcp(&[23, 24, 22], &[1, 1, 1], Some(&names)));
}

#[test]
fn an_empty_key_goes_to_hash_0_unhashed() {
    // fnv1a_32("") % 3 is 1, but twemproxy does not hash an empty key: it takes bucket 0, the server
    // whose name sorts first.
    let pool = Pool::new("", "fnv1a_32", "modula").tcp(&[17, 18, 19], &[1, 1, 1], None);
    let port = free_port();
    let nutcracker = Nutcracker::start(&pool.yaml(port), port);
    write_through(nutcracker.client(), &[Vec::new()], "nutcracker");
    let holders: Vec<usize> = pool
        .servers
        .iter()
        .enumerate()
        .filter(|(_, (_, backend))| {
            let backend = backend.expect("a live backend");
            servers().client(backend).cmd(&["EXISTS", ""]) == Reply::Int(1)
        })
        .map(|(position, _)| position)
        .collect();
    assert_eq!(holders, pool.slotline_placement(&[Vec::new()], &[true; 3]));
}

/// A server that refuses connections, with auto_eject_hosts: twemproxy rebuilds without it (fewer
/// live servers, less live weight), and slotline's `with_live` must agree.
fn check_ejection(prefix: &str, hash: &'static str, distribution: &'static str) {
    let mut pool = Pool::new(prefix, hash, distribution).tcp(&[7, 8, 9], &[2, 1, 3], None);
    pool.servers
        .insert(1, (format!("127.0.0.1:{}:2", free_port()), None));
    pool.extra = "  auto_eject_hosts: true\n  server_failure_limit: 1\n  \
                  server_retry_timeout: 600000\n"
        .to_string();
    let port = free_port();
    let nutcracker = Nutcracker::start(&pool.yaml(port), port);
    // Keys until one goes to the dead server and fails; that ejects it.
    let mut client = nutcracker.client();
    let failed = (0..2000).any(|i| {
        let probe = format!("probe-{prefix}{i}");
        client.cmd(&["SET", &probe, "x"]).is_error()
    });
    assert!(failed, "no key went to the refusing server");
    let keys = test_keys(&pool.prefix, pool.keys);
    write_through(nutcracker.client(), &keys, "nutcracker");
    let actual = nutcracker_placement(&pool, &keys);
    assert_same_placement(&pool, &keys, &actual, &[true, false, true, true]);
}

#[test]
fn an_ejected_server_leaves_the_ring() {
    check_ejection("eject-ketama:", "fnv1a_64", "ketama");
    check_ejection("eject-modula:", "md5", "modula");
}

#[test]
fn random_puts_each_key_on_one_server() {
    let mut pool = Pool::new("random:", "fnv1a_64", "random").tcp(&[12, 13, 14], &[1, 1, 1], None);
    pool.keys = 600;
    let port = free_port();
    let nutcracker = Nutcracker::start(&pool.yaml(port), port);
    let keys = test_keys(&pool.prefix, pool.keys);
    write_through(nutcracker.client(), &keys, "nutcracker");
    let actual = nutcracker_placement(&pool, &keys);
    let used = (0..3).filter(|s| actual.contains(s)).count();
    assert!(used > 1, "600 random placements all on one server");
    // slotline's choice for a key is some live server too.
    assert!(pool
        .slotline_placement(&keys, &[true, false, true])
        .iter()
        .all(|&s| s == 0 || s == 2));
}

//! twemproxy's server selection for a sharded pool: `ketama` (consistent hashing on an MD5 ring),
//! `modula` and `random`, built exactly as twemproxy 0.5 builds them, including the ring it rebuilds
//! when `auto_eject_hosts` takes servers out.
//!
//! twemproxy numbers a pool's servers after sorting them by name (shorter names first, then bytes);
//! that order decides modula's buckets and which server wins a tie on the ring. Callers here keep their
//! config order: every index taken or returned is a position in the `servers` given to
//! [`Distribution::new`].

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

use super::hash::{hash_tag, Hash};

/// A twemproxy `distribution:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DistributionKind {
    Ketama,
    Modula,
    Random,
}

/// A `distribution:` name twemproxy does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown distribution {0:?} (twemproxy knows ketama, modula, random)")]
pub struct UnknownDistribution(pub String);

impl DistributionKind {
    pub fn name(self) -> &'static str {
        match self {
            DistributionKind::Ketama => "ketama",
            DistributionKind::Modula => "modula",
            DistributionKind::Random => "random",
        }
    }
}

impl FromStr for DistributionKind {
    type Err = UnknownDistribution;

    fn from_str(s: &str) -> Result<DistributionKind, UnknownDistribution> {
        [
            DistributionKind::Ketama,
            DistributionKind::Modula,
            DistributionKind::Random,
        ]
        .into_iter()
        .find(|d| d.name() == s)
        .ok_or_else(|| UnknownDistribution(s.to_string()))
    }
}

impl fmt::Display for DistributionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A server as the distribution sees it: the name it is hashed and sorted by (see
/// [`ServerLine::ring_name`](super::ServerLine::ring_name)) and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    pub weight: u32,
}

/// Why a distribution cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistributionError {
    #[error("a pool needs at least one server")]
    NoServers,
    #[error("server {0:?} has weight 0")]
    ZeroWeight(String),
    #[error("two servers are named {0:?}")]
    DuplicateName(String),
    #[error("the servers' weights add up to more than 4294967295")]
    TotalWeightTooLarge,
    #[error("{got} live flags given for {servers} servers")]
    LiveMask { servers: usize, got: usize },
    #[error("no live server")]
    NoLiveServer,
}

/// twemproxy 0.5 formats each ring point's key into a buffer of this many bytes (`KETAMA_MAX_HOSTLEN`,
/// 0x111 in Debian's nutcracker 0.5.0) and hashes at most one byte less.
const KETAMA_MAX_HOSTLEN: usize = 273;

/// Picks a server for a key hash, as a twemproxy pool does.
#[derive(Debug, Clone)]
pub struct Distribution {
    kind: DistributionKind,
    servers: Vec<ServerSpec>,
    /// twemproxy's server index -> config index.
    order: Vec<usize>,
    live: Vec<bool>,
    select: Select,
}

#[derive(Debug, Clone)]
enum Select {
    /// The continuum of every live server's points (see [`Ring`]).
    Ketama(Ring),
    /// Live servers in twemproxy order, and where each one's run of `weight` buckets ends.
    Modula { servers: Vec<usize>, ends: Vec<u32> },
    /// Live servers in twemproxy order.
    Random(Vec<usize>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    value: u32,
    /// Config index.
    server: usize,
}

/// A ketama continuum: points sorted by value (ties in twemproxy's server order), and where each
/// of `BUCKETS` equal slices of the hash space starts in it, so that a lookup searches the one or
/// two points of its slice instead of the whole ring (a binary search over the 160 points per
/// server was 3% of slotline's CPU at -P 16).
#[derive(Debug, Clone)]
struct Ring {
    points: Vec<Point>,
    /// `starts[b]`: the first point whose value is at least `b << BUCKET_SHIFT`; `BUCKETS + 1` of
    /// them, the last being `points.len()`.
    starts: Box<[u32]>,
}

const BUCKET_SHIFT: u32 = 22;
const BUCKETS: usize = 1 << (32 - BUCKET_SHIFT);

impl Ring {
    fn new(points: Vec<Point>) -> Ring {
        let starts = (0..=BUCKETS as u64)
            .map(|b| {
                let from = b << BUCKET_SHIFT;
                points.partition_point(|p| u64::from(p.value) < from) as u32
            })
            .collect();
        Ring { points, starts }
    }

    /// The server of the first point at or after `hash`, wrapping past the top of the ring.
    fn server_for(&self, hash: u32) -> usize {
        let b = (hash >> BUCKET_SHIFT) as usize;
        let (lo, hi) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        let at = lo + self.points[lo..hi].partition_point(|p| p.value < hash);
        self.points
            .get(at)
            .or(self.points.first())
            .map_or(0, |p| p.server)
    }
}

impl Distribution {
    /// The distribution of a pool with every server live. `servers` are in config order.
    pub fn new(
        kind: DistributionKind,
        servers: &[ServerSpec],
    ) -> Result<Distribution, DistributionError> {
        if servers.is_empty() {
            return Err(DistributionError::NoServers);
        }
        if let Some(s) = servers.iter().find(|s| s.weight == 0) {
            return Err(DistributionError::ZeroWeight(s.name.clone()));
        }
        if u32::try_from(servers.iter().map(|s| u64::from(s.weight)).sum::<u64>()).is_err() {
            return Err(DistributionError::TotalWeightTooLarge);
        }
        let mut order: Vec<usize> = (0..servers.len()).collect();
        order.sort_by(|&a, &b| twemproxy_name_cmp(&servers[a].name, &servers[b].name));
        if let Some(pair) = order
            .windows(2)
            .find(|w| servers[w[0]].name == servers[w[1]].name)
        {
            return Err(DistributionError::DuplicateName(
                servers[pair[0]].name.clone(),
            ));
        }
        let mut distribution = Distribution {
            kind,
            servers: servers.to_vec(),
            order,
            live: vec![true; servers.len()],
            select: Select::Random(Vec::new()),
        };
        distribution.select = distribution.build()?;
        Ok(distribution)
    }

    /// The same pool with only the servers whose `live` flag (config order) is set: what twemproxy
    /// rebuilds when it ejects a server, and again when the server returns.
    pub fn with_live(&self, live: &[bool]) -> Result<Distribution, DistributionError> {
        if live.len() != self.servers.len() {
            return Err(DistributionError::LiveMask {
                servers: self.servers.len(),
                got: live.len(),
            });
        }
        let mut distribution = Distribution {
            live: live.to_vec(),
            ..self.clone()
        };
        distribution.select = distribution.build()?;
        Ok(distribution)
    }

    fn build(&self) -> Result<Select, DistributionError> {
        let live: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|&i| self.live[i])
            .collect();
        if live.is_empty() {
            return Err(DistributionError::NoLiveServer);
        }
        // Fits: `new` checked the sum of all weights.
        let total: u32 = live.iter().map(|&i| self.servers[i].weight).sum();
        Ok(match self.kind {
            DistributionKind::Ketama => {
                let mut ring = Vec::new();
                for &i in &live {
                    let server = &self.servers[i];
                    let points = ketama_points(server.weight, total, live.len() as u32);
                    for n in 0..points / 4 {
                        let digest = Md5::digest(point_key(&server.name, n));
                        for word in digest.chunks_exact(4) {
                            let value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                            ring.push(Point { value, server: i });
                        }
                    }
                }
                if ring.is_empty() {
                    // Cannot happen (some server gets at least 40 keys), but not worth a panic.
                    return Err(DistributionError::NoLiveServer);
                }
                // Stable, as glibc's merge-sort qsort is: equal values stay in twemproxy's order.
                ring.sort_by_key(|p| p.value);
                Select::Ketama(Ring::new(ring))
            }
            DistributionKind::Modula => {
                let ends = live
                    .iter()
                    .scan(0u32, |end, &i| {
                        *end += self.servers[i].weight;
                        Some(*end)
                    })
                    .collect();
                Select::Modula {
                    servers: live,
                    ends,
                }
            }
            DistributionKind::Random => Select::Random(live),
        })
    }

    /// The config index of the server for a key hash. For `random` the argument is the random draw
    /// (twemproxy takes `random() % live servers` and ignores the key): pass a random number.
    pub fn server_for(&self, hash: u32) -> usize {
        match &self.select {
            Select::Ketama(ring) => ring.server_for(hash),
            Select::Modula { servers, ends } => {
                let total = ends.last().copied().unwrap_or(1);
                let bucket = hash % total;
                let at = ends.partition_point(|&end| end <= bucket);
                servers.get(at).copied().unwrap_or(0)
            }
            Select::Random(live) => live
                .get(hash as usize % live.len().max(1))
                .copied()
                .unwrap_or(0),
        }
    }

    /// The config index of the server a twemproxy pool with this `hash` and `hash_tag` sends `key` to.
    /// As in twemproxy, a pool of one server needs no hash, and an empty key (or tag) hashes to 0. For
    /// `random` the key's hash stands in for the draw: a fixed choice, but a live server, which is all
    /// twemproxy promises.
    pub fn server_for_key(&self, hash: Hash, tag: Option<[u8; 2]>, key: &[u8]) -> usize {
        if self.servers.len() == 1 {
            return 0;
        }
        let hashed = hash_tag(key, tag);
        self.server_for(if hashed.is_empty() {
            0
        } else {
            hash.hash(hashed)
        })
    }

    pub fn kind(&self) -> DistributionKind {
        self.kind
    }

    /// The servers in config order.
    pub fn servers(&self) -> &[ServerSpec] {
        &self.servers
    }

    /// Config indices in twemproxy's server order (sorted by name).
    pub fn twemproxy_order(&self) -> &[usize] {
        &self.order
    }

    /// Whether each server (config order) is on the ring.
    pub fn live(&self) -> &[bool] {
        &self.live
    }
}

/// twemproxy's `string_compare`: shorter first, then byte by byte.
fn twemproxy_name_cmp(a: &str, b: &str) -> Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// How many ring points twemproxy gives a server, computed in single precision exactly as its C does
/// (`floorf((float)(pct * 160 / 4 * (float)n_live + 0.0000000001)) * 4`); rounding gives 156 instead
/// of 160 for some pool sizes, and those keys must stay where twemproxy put them.
fn ketama_points(weight: u32, total_weight: u32, n_live: u32) -> u32 {
    let pct = weight as f32 / total_weight as f32;
    let per_hash = pct * 160.0 / 4.0 * n_live as f32;
    // The constant is a C double: the sum is taken in double and narrowed back.
    let nudged = (f64::from(per_hash) + 0.000_000_000_1) as f32;
    (nudged.floor() * 4.0) as u32
}

/// The key of the `n`th group of four points, `name-n`, cut as twemproxy 0.5 cuts it: to the 272 bytes
/// its buffer holds. (Older twemproxy sources have an 86-byte buffer and hash past it; the 0.5.0 binary
/// logs and cuts, and that is what the integration tests pin.)
fn point_key(name: &str, n: u32) -> Vec<u8> {
    let mut key = format!("{name}-{n}").into_bytes();
    key.truncate(KETAMA_MAX_HOSTLEN - 1);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucketed_ring_finds_the_point_a_search_of_the_whole_ring_finds() {
        let names: Vec<String> = (0..7).map(|i| format!("10.0.0.{i}:6379")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let d = Distribution::new(DistributionKind::Ketama, &specs(&names)).expect("ring");
        let Select::Ketama(ring) = &d.select else {
            panic!("not a ring")
        };
        let whole = |hash: u32| {
            let at = ring.points.partition_point(|p| p.value < hash);
            ring.points
                .get(at)
                .or(ring.points.first())
                .map(|p| p.server)
        };
        let mut hashes = vec![0, 1, u32::MAX, u32::MAX - 1];
        for p in &ring.points {
            hashes.extend([p.value.wrapping_sub(1), p.value, p.value.wrapping_add(1)]);
        }
        // And the bucket edges, and a spread of others.
        hashes.extend(
            (0..=BUCKETS as u64).map(|b| (b << BUCKET_SHIFT).min(u64::from(u32::MAX)) as u32),
        );
        hashes.extend((0..100_000u32).map(|i| i.wrapping_mul(2_654_435_761)));
        for hash in hashes {
            assert_eq!(Some(ring.server_for(hash)), whole(hash), "hash {hash}");
        }
    }

    fn specs(names: &[&str]) -> Vec<ServerSpec> {
        names
            .iter()
            .map(|n| ServerSpec {
                name: n.to_string(),
                weight: 1,
            })
            .collect()
    }

    fn ring(d: &Distribution) -> &[Point] {
        match &d.select {
            Select::Ketama(ring) => &ring.points,
            other => panic!("not a ring: {other:?}"),
        }
    }

    fn points_of(d: &Distribution, server: usize) -> usize {
        ring(d).iter().filter(|p| p.server == server).count()
    }

    const LOCAL3: [&str; 3] = ["127.0.0.1:6379", "127.0.0.1:6380", "127.0.0.1:6381"];

    #[test]
    fn ketama_ring_of_three_local_servers() {
        let d = Distribution::new(DistributionKind::Ketama, &specs(&LOCAL3)).unwrap();
        assert_eq!(ring(&d).len(), 480);
        assert!(ring(&d).windows(2).all(|w| w[0].value <= w[1].value));
        // ketama_hash("127.0.0.1:6379-0", 0..4) in nutcracker.
        for value in [2344048390, 135292586, 1821951742, 687840887] {
            assert!(ring(&d).contains(&Point { value, server: 0 }), "{value}");
        }
        for (key, server) in [("foo", 2), ("bar", 0), ("user:1000", 2), ("a", 0)] {
            assert_eq!(
                d.server_for_key(Hash::Fnv1a_64, None, key.as_bytes()),
                server,
                "{key}"
            );
        }
    }

    #[test]
    fn lookup_takes_the_first_point_at_or_after_the_hash_and_wraps() {
        let d = Distribution::new(DistributionKind::Ketama, &specs(&LOCAL3)).unwrap();
        let ring = ring(&d);
        let (first, last) = (ring[0], ring[ring.len() - 1]);
        assert_eq!(d.server_for(0), first.server);
        assert_eq!(d.server_for(first.value), first.server);
        assert_eq!(d.server_for(last.value), last.server);
        if last.value < u32::MAX {
            assert_eq!(d.server_for(last.value + 1), first.server);
        }
        // Equal values: the first of them, in twemproxy's server order.
        for p in ring {
            let at = ring.iter().find(|q| q.value >= p.value).map(|q| q.server);
            assert_eq!(Some(d.server_for(p.value)), at);
        }
    }

    #[test]
    fn single_precision_point_counts() {
        for n in [25u32, 47, 50, 55, 61, 71, 94, 100] {
            assert_eq!(ketama_points(1, n, n), 156, "n = {n}");
        }
        for n in [1u32, 2, 3, 10, 24, 26, 48] {
            assert_eq!(ketama_points(1, n, n), 160, "n = {n}");
        }
        let names: Vec<String> = (0..25).map(|i| format!("10.0.0.{i}:6379")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let d = Distribution::new(DistributionKind::Ketama, &specs(&names)).unwrap();
        assert_eq!(ring(&d).len(), 25 * 156);
        // Weights: points follow weight / total live weight.
        assert_eq!(ketama_points(3, 4, 2), 240);
        assert_eq!(ketama_points(1, 4, 2), 80);
    }

    #[test]
    fn servers_are_numbered_by_sorted_name_but_reported_in_config_order() {
        let sorted = Distribution::new(DistributionKind::Ketama, &specs(&LOCAL3)).unwrap();
        let shuffled = ["127.0.0.1:6381", "127.0.0.1:6379", "127.0.0.1:6380"];
        let d = Distribution::new(DistributionKind::Ketama, &specs(&shuffled)).unwrap();
        assert_eq!(d.twemproxy_order(), &[1, 2, 0]);
        for h in (0..u32::MAX).step_by(7_777_777) {
            assert_eq!(shuffled[d.server_for(h)], LOCAL3[sorted.server_for(h)]);
        }
        // Shorter names sort first.
        let d = Distribution::new(DistributionKind::Modula, &specs(&["bb", "a", "ab"])).unwrap();
        assert_eq!(d.twemproxy_order(), &[1, 2, 0]);
    }

    #[test]
    fn modula_repeats_each_server_by_weight_in_name_order() {
        let servers = [
            ServerSpec {
                name: "b".into(),
                weight: 2,
            },
            ServerSpec {
                name: "a".into(),
                weight: 1,
            },
        ];
        let d = Distribution::new(DistributionKind::Modula, &servers).unwrap();
        // Buckets: a, b, b.
        let picks: Vec<usize> = (0..6).map(|h| d.server_for(h)).collect();
        assert_eq!(picks, [1, 0, 0, 1, 0, 0]);
        assert_eq!(d.server_for(u32::MAX), [1, 0, 0][(u32::MAX % 3) as usize]);
        // Ejecting "a" leaves two buckets, both b.
        let d = d.with_live(&[true, false]).unwrap();
        assert!((0..10).all(|h| d.server_for(h) == 0));
    }

    #[test]
    fn ejection_rebuilds_with_live_servers_only() {
        let names: Vec<String> = (0..5).map(|i| format!("shard{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let d = Distribution::new(DistributionKind::Ketama, &specs(&names)).unwrap();
        let ejected = d.with_live(&[true, false, true, true, true]).unwrap();
        assert_eq!(ejected.live(), &[true, false, true, true, true]);
        assert_eq!(points_of(&ejected, 1), 0);
        assert_eq!(ring(&ejected).len(), 4 * 160);
        // Equal weights: the others keep their points, so only the ejected server's keys move.
        for h in (0..u32::MAX).step_by(1_000_003) {
            let before = d.server_for(h);
            let after = ejected.server_for(h);
            assert_ne!(after, 1);
            if before != 1 {
                assert_eq!(after, before);
            }
        }
        // Unequal weights: shares are recomputed over the live weight.
        let mut weighted = specs(&["a", "b", "c"]);
        weighted[2].weight = 2;
        let d = Distribution::new(DistributionKind::Ketama, &weighted).unwrap();
        assert_eq!(
            [points_of(&d, 0), points_of(&d, 1), points_of(&d, 2)],
            [120, 120, 240]
        );
        let d = d.with_live(&[true, false, true]).unwrap();
        assert_eq!(
            [points_of(&d, 0), points_of(&d, 1), points_of(&d, 2)],
            [104, 0, 212]
        );
        // Back to all live: the original ring.
        let back = d.with_live(&[true, true, true]).unwrap();
        assert_eq!(
            ring(&back),
            ring(&Distribution::new(DistributionKind::Ketama, &weighted).unwrap())
        );
    }

    #[test]
    fn random_picks_live_servers() {
        let d = Distribution::new(DistributionKind::Random, &specs(&["a", "b", "c"]))
            .unwrap()
            .with_live(&[false, true, true])
            .unwrap();
        let picked: Vec<usize> = (0..4).map(|draw| d.server_for(draw)).collect();
        assert_eq!(picked, [1, 2, 1, 2]);
        assert!((0..100).all(|k| d.server_for_key(Hash::Md5, None, &[k]) != 0));
    }

    #[test]
    fn one_server_and_empty_keys() {
        let d = Distribution::new(DistributionKind::Ketama, &specs(&["only"])).unwrap();
        assert_eq!(d.server_for_key(Hash::Md5, None, b"anything"), 0);
        // An empty key, or a key whose tag is empty, hashes to 0 rather than through the function.
        let d = Distribution::new(DistributionKind::Modula, &specs(&["a", "bb", "ccc"])).unwrap();
        assert_eq!(d.server_for_key(Hash::Fnv1a_32, None, b""), d.server_for(0));
        assert_ne!(Hash::Fnv1a_32.hash(b"") % 3, 0);
    }

    #[test]
    fn long_names_are_cut_to_272_bytes() {
        let name = "n".repeat(270);
        assert_eq!(point_key(&name, 9), format!("{name}-9").into_bytes());
        assert_eq!(point_key(&name, 10), format!("{name}-1").into_bytes());
        assert_eq!(point_key(&name, 39), format!("{name}-3").into_bytes());
        // Names that agree in their first 272 bytes get the same points: every tie goes to the one
        // twemproxy numbers first (sorted by name), whatever the config order.
        let long = "x".repeat(280);
        let servers = specs(&[&format!("{long}b"), "c", &format!("{long}a")]);
        let d = Distribution::new(DistributionKind::Ketama, &servers).unwrap();
        assert_eq!(d.twemproxy_order(), &[1, 2, 0]);
        assert_eq!(points_of(&d, 0), 160);
        assert_eq!(points_of(&d, 2), 160);
        let mut owners: Vec<usize> = (0..u32::MAX)
            .step_by(1_000_003)
            .map(|h| d.server_for(h))
            .collect();
        owners.sort();
        owners.dedup();
        assert_eq!(owners, [1, 2]);
    }

    #[test]
    fn invalid_pools_are_rejected() {
        use DistributionError::*;
        let ketama = DistributionKind::Ketama;
        assert_eq!(Distribution::new(ketama, &[]).unwrap_err(), NoServers);
        let mut zero = specs(&["a", "b"]);
        zero[1].weight = 0;
        assert_eq!(
            Distribution::new(ketama, &zero).unwrap_err(),
            ZeroWeight("b".into())
        );
        assert_eq!(
            Distribution::new(ketama, &specs(&["a", "b", "a"])).unwrap_err(),
            DuplicateName("a".into())
        );
        let mut heavy = specs(&["a", "b"]);
        heavy[0].weight = u32::MAX;
        assert_eq!(
            Distribution::new(ketama, &heavy).unwrap_err(),
            TotalWeightTooLarge
        );
        let d = Distribution::new(ketama, &specs(&["a", "b"])).unwrap();
        assert_eq!(
            d.with_live(&[true]).unwrap_err(),
            LiveMask { servers: 2, got: 1 }
        );
        assert_eq!(d.with_live(&[false, false]).unwrap_err(), NoLiveServer);
    }

    #[test]
    fn distribution_names() {
        for kind in [
            DistributionKind::Ketama,
            DistributionKind::Modula,
            DistributionKind::Random,
        ] {
            assert_eq!(kind.name().parse::<DistributionKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.name());
        }
        assert_eq!(
            "Ketama".parse::<DistributionKind>(),
            Err(UnknownDistribution("Ketama".into()))
        );
    }
}

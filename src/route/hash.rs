//! twemproxy's twelve key hashes and its hash tags, bit-exact with twemproxy 0.5 (nutcracker) on x86-64.
//!
//! A user migrating from twemproxy keeps their data only if every key hashes to the same value as
//! before, quirks included: twemproxy reads keys as C `char`, which is signed on x86-64, so several
//! hashes sign-extend bytes >= 0x80 (on arm64, where `char` is unsigned, twemproxy itself gives other
//! values for such keys). The golden values in the tests come from the real nutcracker binary
//! (tests/support/twemproxy_golden.py).

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

use super::slot::CRC16_TABLE;

/// A twemproxy `hash:` function.
// Variants spell twemproxy's names (fnv1a_64, not fnv1a64).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hash {
    OneAtATime,
    Md5,
    Crc16,
    Crc32,
    Crc32a,
    Fnv1_64,
    Fnv1a_64,
    Fnv1_32,
    Fnv1a_32,
    Hsieh,
    Murmur,
    Jenkins,
}

/// A `hash:` name twemproxy does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hash {0:?} (twemproxy knows one_at_a_time, md5, crc16, crc32, crc32a, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, hsieh, murmur, jenkins)")]
pub struct UnknownHash(pub String);

impl Hash {
    /// All of them, in twemproxy's order.
    pub const ALL: [Hash; 12] = [
        Hash::OneAtATime,
        Hash::Md5,
        Hash::Crc16,
        Hash::Crc32,
        Hash::Crc32a,
        Hash::Fnv1_64,
        Hash::Fnv1a_64,
        Hash::Fnv1_32,
        Hash::Fnv1a_32,
        Hash::Hsieh,
        Hash::Murmur,
        Hash::Jenkins,
    ];

    /// The name used in twemproxy's configuration.
    pub fn name(self) -> &'static str {
        match self {
            Hash::OneAtATime => "one_at_a_time",
            Hash::Md5 => "md5",
            Hash::Crc16 => "crc16",
            Hash::Crc32 => "crc32",
            Hash::Crc32a => "crc32a",
            Hash::Fnv1_64 => "fnv1_64",
            Hash::Fnv1a_64 => "fnv1a_64",
            Hash::Fnv1_32 => "fnv1_32",
            Hash::Fnv1a_32 => "fnv1a_32",
            Hash::Hsieh => "hsieh",
            Hash::Murmur => "murmur",
            Hash::Jenkins => "jenkins",
        }
    }

    /// The hash of `key` as twemproxy computes it. (twemproxy itself never hashes an empty key: a pool
    /// sends it to hash 0; see [`Distribution::server_for_key`](super::Distribution::server_for_key).)
    ///
    /// ```
    /// use slotline::route::Hash;
    /// assert_eq!(Hash::Fnv1a_64.hash(b"foo"), 4275688823);
    /// ```
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            Hash::OneAtATime => one_at_a_time(key),
            Hash::Md5 => md5_hash(key),
            Hash::Crc16 => crc16(key),
            Hash::Crc32 => (!crc32_raw(key) >> 16) & 0x7fff,
            Hash::Crc32a => !crc32_raw(key),
            Hash::Fnv1_64 => fnv1_64(key),
            Hash::Fnv1a_64 => fnv1a_64(key),
            Hash::Fnv1_32 => fnv1_32(key),
            Hash::Fnv1a_32 => fnv1a_32(key),
            Hash::Hsieh => hsieh(key),
            Hash::Murmur => murmur(key),
            Hash::Jenkins => jenkins(key),
        }
    }
}

impl FromStr for Hash {
    type Err = UnknownHash;

    fn from_str(s: &str) -> Result<Hash, UnknownHash> {
        Hash::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| UnknownHash(s.to_string()))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The part of `key` a pool with `hash_tag: "AB"` hashes: the bytes between the first `A` and the next
/// `B` after it. The whole key when there is no tag, either character is missing, or the text between
/// them is empty.
///
/// ```
/// use slotline::route::hash_tag;
/// assert_eq!(hash_tag(b"user:{42}:name", Some(*b"{}")), b"42");
/// assert_eq!(hash_tag(b"user:{}:name", Some(*b"{}")), b"user:{}:name");
/// ```
pub fn hash_tag(key: &[u8], tag: Option<[u8; 2]>) -> &[u8] {
    let Some([open, close]) = tag else {
        return key;
    };
    if let Some(start) = key.iter().position(|&b| b == open) {
        let inner = &key[start + 1..];
        if let Some(len) = inner.iter().position(|&b| b == close) {
            if len > 0 {
                return &inner[..len];
            }
        }
    }
    key
}

/// A byte as C's signed `char` widened to 32 bits, as twemproxy's `(uint32_t)key[i]` does on x86-64.
fn signed(b: u8) -> u32 {
    b as i8 as i32 as u32
}

fn one_at_a_time(key: &[u8]) -> u32 {
    let mut h = key.iter().fold(0u32, |mut h, &b| {
        h = h.wrapping_add(signed(b));
        h = h.wrapping_add(h << 10);
        h ^ (h >> 6)
    });
    h = h.wrapping_add(h << 3);
    h ^= h >> 11;
    h.wrapping_add(h << 15)
}

/// The first four bytes of the MD5 digest, little-endian.
fn md5_hash(key: &[u8]) -> u32 {
    let digest = Md5::digest(key);
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// CRC16-XMODEM, except that the register is 32 bits wide and never masked: bits shifted past the 16th
/// stay in the result. The table index (bits 8..16) is what XMODEM uses, so the low 16 bits are the
/// XMODEM CRC.
fn crc16(key: &[u8]) -> u32 {
    key.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ u32::from(CRC16_TABLE[((crc >> 8) as u8 ^ b) as usize])
    })
}

/// The reflected CRC-32 register after `key`, before the final inversion.
fn crc32_raw(key: &[u8]) -> u32 {
    key.iter().fold(!0u32, |crc, &b| {
        (crc >> 8) ^ CRC32_TABLE[(crc as u8 ^ b) as usize]
    })
}

const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// 64-bit FNV-1 truncated to 32 bits; the byte is sign-extended to 64 bits before the XOR.
fn fnv1_64(key: &[u8]) -> u32 {
    let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        h.wrapping_mul(0x0100_0000_01b3) ^ (b as i8 as i64 as u64)
    });
    h as u32
}

/// Despite the name, a 32-bit FNV-1a with the low halves of the 64-bit constants.
fn fnv1a_64(key: &[u8]) -> u32 {
    key.iter()
        .fold(0x8422_2325u32, |h, &b| (h ^ signed(b)).wrapping_mul(0x01b3))
}

fn fnv1_32(key: &[u8]) -> u32 {
    key.iter().fold(2_166_136_261u32, |h, &b| {
        h.wrapping_mul(16_777_619) ^ signed(b)
    })
}

fn fnv1a_32(key: &[u8]) -> u32 {
    key.iter().fold(2_166_136_261u32, |h, &b| {
        (h ^ signed(b)).wrapping_mul(16_777_619)
    })
}

/// Paul Hsieh's SuperFastHash, seeded with 0; a 3-byte tail's last byte is read as a signed char.
fn hsieh(key: &[u8]) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let get16 = |b: &[u8]| u32::from(b[0]) | (u32::from(b[1]) << 8);
    let mut chunks = key.chunks_exact(4);
    let mut h = 0u32;
    for chunk in &mut chunks {
        h = h.wrapping_add(get16(chunk));
        let tmp = (get16(&chunk[2..]) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    match *chunks.remainder() {
        [b0, b1, b2] => {
            h = h.wrapping_add(get16(&[b0, b1]));
            h ^= h << 16;
            h ^= signed(b2) << 18;
            h = h.wrapping_add(h >> 11);
        }
        [b0, b1] => {
            h = h.wrapping_add(get16(&[b0, b1]));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        [b0] => {
            h = h.wrapping_add(u32::from(b0));
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h.wrapping_add(h >> 6)
}

/// MurmurHash2 with libmemcached's seed, `0xdeadbeef * len`.
fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let mut h = 0xdead_beefu32.wrapping_mul(len) ^ len;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Bob Jenkins' lookup3 `hashlittle` with initval 13. twemproxy has three code paths by alignment;
/// on a little-endian machine they agree, so this reads bytes.
fn jenkins(key: &[u8]) -> u32 {
    let init = 0xdead_beefu32
        .wrapping_add(key.len() as u32)
        .wrapping_add(13);
    let (mut a, mut b, mut c) = (init, init, init);
    if key.is_empty() {
        return c;
    }
    let word = |bytes: &[u8]| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..]));
        b = b.wrapping_add(word(&rest[4..]));
        c = c.wrapping_add(word(&rest[8..]));
        (a, b, c) = jenkins_mix(a, b, c);
        rest = &rest[12..];
    }
    // The last block, 1 to 12 bytes, zero-padded.
    let mut last = [0u8; 12];
    last[..rest.len()].copy_from_slice(rest);
    a = a.wrapping_add(word(&last[0..]));
    b = b.wrapping_add(word(&last[4..]));
    c = c.wrapping_add(word(&last[8..]));
    jenkins_final(a, b, c)
}

fn jenkins_mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    for (r1, r2, r3) in [(4, 6, 8), (16, 19, 4)] {
        a = a.wrapping_sub(c) ^ c.rotate_left(r1);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a) ^ a.rotate_left(r2);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b) ^ b.rotate_left(r3);
        b = b.wrapping_add(a);
    }
    (a, b, c)
}

fn jenkins_final(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c = (c ^ b).wrapping_sub(b.rotate_left(14));
    a = (a ^ c).wrapping_sub(c.rotate_left(11));
    b = (b ^ a).wrapping_sub(a.rotate_left(25));
    c = (c ^ b).wrapping_sub(b.rotate_left(16));
    a = (a ^ c).wrapping_sub(c.rotate_left(4));
    b = (b ^ a).wrapping_sub(a.rotate_left(14));
    (c ^ b).wrapping_sub(b.rotate_left(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Printed by tests/support/twemproxy_golden.py from nutcracker 0.5.0 (Debian amd64).
    const KEYS: [&[u8]; 7] = [
        b"",
        b"a",
        b"foo",
        b"user:1000",
        b"\xc3\xa9t\xc3\xa9",
        b"\x00\x7f\x80\xff\xfe\xc3\xa9",
        b"The quick brown fox jumps \xe9\xff",
    ];
    #[rustfmt::skip]
    const GOLDEN: [(&str, [u32; 7]); 12] = [
        ("one_at_a_time", [0, 3392050242, 596015325, 3043211087, 2144029493, 792804827, 4131531525]),
        ("md5", [3649838548, 3111502092, 3675831724, 781738503, 510308318, 967661687, 3767642396]),
        ("crc16", [0, 31879, 205303702, 3781445233, 3861292903, 2696115835, 2379712362]),
        ("crc32", [0, 26807, 3187, 8052, 17617, 30844, 20577]),
        ("crc32a", [0, 3904355907, 2356372769, 2675185635, 1154575572, 4168881938, 3496066001]),
        ("fnv1_64", [2216829733, 2248259518, 1805727027, 3550362913, 3995086359, 2415500257, 3026143081]),
        ("fnv1a_64", [2216829733, 2248273036, 4275688823, 2927313545, 3933641815, 2190160213, 1886644353]),
        ("fnv1_32", [2166136261, 84696446, 1083137555, 2796551329, 3199958167, 4125854529, 1036738377]),
        ("fnv1a_32", [2166136261, 3826002220, 2851307223, 1350311305, 200187927, 3519749301, 485322401]),
        ("hsieh", [0, 2472816263, 1993659431, 3723237737, 3432339831, 1516645235, 1811166437]),
        ("murmur", [0, 1262581116, 3303027599, 2384768711, 3664841419, 1641174177, 3822464724]),
        ("jenkins", [3735928572, 3768813200, 2583187353, 76303748, 2303093779, 1501165417, 2938447009]),
    ];

    #[test]
    fn every_hash_matches_nutcracker() {
        for (name, values) in GOLDEN {
            let hash: Hash = name.parse().unwrap();
            for (key, want) in KEYS.iter().zip(values) {
                assert_eq!(hash.hash(key), want, "{name}({key:?})");
            }
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for hash in Hash::ALL {
            assert_eq!(hash.name().parse::<Hash>(), Ok(hash));
            assert_eq!(hash.to_string(), hash.name());
        }
        for bad in ["", "FNV1A_64", "fnv1a", "crc64", " md5"] {
            assert_eq!(bad.parse::<Hash>(), Err(UnknownHash(bad.to_string())));
        }
    }

    #[test]
    fn fnv1a_64_is_32_bit_with_sign_extended_bytes() {
        assert_eq!(Hash::Fnv1a_64.hash(b"foo"), 4275688823);
        assert_eq!(Hash::Fnv1a_64.hash(b"a"), 2248273036);
        assert_eq!(Hash::Fnv1a_64.hash("été".as_bytes()), 3933641815);
    }

    #[test]
    fn crc_variants() {
        // crc16 keeps XMODEM in its low 16 bits (0x31c3 is XMODEM's check value) and more above.
        let crc16 = Hash::Crc16.hash(b"123456789");
        assert_eq!(crc16 & 0xffff, 0x31c3);
        assert!(crc16 > 0xffff);
        // crc32a is the standard CRC-32 (check value 0xcbf43926); crc32 is libmemcached's 15 bits of it.
        assert_eq!(Hash::Crc32a.hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(Hash::Crc32.hash(b"123456789"), (0xcbf4_3926 >> 16) & 0x7fff);
    }

    #[test]
    fn hash_tags() {
        let tag = Some(*b"{}");
        for (key, hashed) in [
            (&b"{user1000}.following"[..], &b"user1000"[..]),
            (b"foo{}{bar}", b"foo{}{bar}"),
            (b"foo{{bar}}zap", b"{bar"),
            (b"foo{bar}{zap}", b"bar"),
            (b"no tag", b"no tag"),
            (b"open{only", b"open{only"),
            (b"close}only{", b"close}only{"),
            (b"", b""),
        ] {
            assert_eq!(hash_tag(key, tag), hashed, "{key:?}");
            assert_eq!(hash_tag(key, None), key);
        }
        // Any two bytes, the same one twice included.
        assert_eq!(hash_tag(b"a$b$c$d", Some(*b"$$")), b"b");
        assert_eq!(hash_tag(b"x:\xff\x00y\xfe", Some([0xff, 0xfe])), b"\x00y");
    }
}

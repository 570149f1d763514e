//! Redis Cluster key slots.

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// A hash slot, always below [`SLOTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u16);

impl Slot {
    pub const FIRST: Slot = Slot(0);

    /// `None` when `n` is not a valid slot number.
    pub fn new(n: u64) -> Option<Slot> {
        (n < SLOTS as u64).then_some(Slot(n as u16))
    }

    pub fn get(self) -> u16 {
        self.0
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The slot of a key: CRC16 (XMODEM) of the key, or of its hash tag (the bytes between the first `{` and
/// the next `}`, when not empty), modulo 16384.
///
/// ```
/// use slotline::route::key_slot;
/// assert_eq!(key_slot(b"foo").get(), 12182); // as CLUSTER KEYSLOT foo
/// // Keys sharing a hash tag share a slot, so multi-key commands on them work.
/// assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
/// ```
pub fn key_slot(key: &[u8]) -> Slot {
    Slot(crc16_xmodem(hash_tag(key)) & (SLOTS as u16 - 1))
}

/// CRC16-XMODEM, one table lookup per byte. (The `crc16` crate computes the same value but pays a
/// bit-by-bit set-up per call, which dominates for short keys; the tests check this one against it.)
fn crc16_xmodem(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[((crc >> 8) as u8 ^ b) as usize]
    })
}

/// CRC16-XMODEM by byte; twemproxy's `crc16` hash uses the same table.
pub(super) const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_redis_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        for (key, slot) in [
            (&b"foo"[..], 12182),
            (b"bar", 5061),
            (b"", 0),
            (b"123456789", 12739),
            (b"{user1000}.following", 3443),
            (b"{user1000}.followers", 3443),
            (b"foo{}{bar}", 8363),
            (b"foo{{bar}}zap", 4015),
            (b"foo{bar}{zap}", 5061),
        ] {
            assert_eq!(
                key_slot(key).get(),
                slot,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn crc_agrees_with_the_crc16_crate() {
        let data: Vec<u8> = (0..700u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            let input = &data[..len];
            assert_eq!(
                crc16_xmodem(input),
                crc16::State::<crc16::XMODEM>::calculate(input)
            );
        }
    }
}

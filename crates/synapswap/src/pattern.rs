//! Verifiable block contents: byte `o` of a block with seed `s` is byte `o % 8` (little-endian) of
//! the word `s + o / 8`. Seeds are spread by SplitMix64, so a block served with another block's
//! bytes, a chunk copied to the wrong offset, or a stale version all fail verification.

/// SplitMix64: spreads consecutive ids over the 64-bit space.
pub fn seed(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn byte_at(seed: u64, offset: u64) -> u8 {
    (seed.wrapping_add(offset / 8) >> (8 * (offset % 8))) as u8
}

/// Fills `buf` with the pattern bytes of `[offset, offset + buf.len())`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let head = (((8 - offset % 8) % 8) as usize).min(buf.len());
    let (h, rest) = buf.split_at_mut(head);
    for (i, b) in h.iter_mut().enumerate() {
        *b = byte_at(seed, offset + i as u64);
    }
    let base_off = offset + head as u64;
    let word0 = seed.wrapping_add(base_off / 8);
    let words = rest.len() / 8;
    let (body, tail) = rest.split_at_mut(words * 8);
    for (k, c) in body.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&word0.wrapping_add(k as u64).to_le_bytes());
    }
    let tail_off = base_off + body.len() as u64;
    for (i, b) in tail.iter_mut().enumerate() {
        *b = byte_at(seed, tail_off + i as u64);
    }
}

/// Whether `buf` holds exactly the pattern bytes of `[offset, offset + buf.len())`.
pub fn verify(seed: u64, offset: u64, buf: &[u8]) -> bool {
    let head = (((8 - offset % 8) % 8) as usize).min(buf.len());
    let (h, rest) = buf.split_at(head);
    if h.iter()
        .enumerate()
        .any(|(i, &b)| b != byte_at(seed, offset + i as u64))
    {
        return false;
    }
    let base_off = offset + head as u64;
    let word0 = seed.wrapping_add(base_off / 8);
    let chunks = rest.chunks_exact(8);
    let tail = chunks.remainder();
    let mut diff = 0u64;
    for (k, c) in chunks.enumerate() {
        let w = u64::from_le_bytes(c.try_into().expect("chunks of 8"));
        diff |= w ^ word0.wrapping_add(k as u64);
    }
    if diff != 0 {
        return false;
    }
    let tail_off = base_off + (rest.len() - tail.len()) as u64;
    tail.iter()
        .enumerate()
        .all(|(i, &b)| b == byte_at(seed, tail_off + i as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_verify_agree_at_any_alignment() {
        let s = seed(42);
        let mut whole = vec![0u8; 1000];
        fill(s, 0, &mut whole);
        for (off, len) in [(0, 1000), (3, 17), (8, 64), (13, 987), (999, 1), (5, 0)] {
            let mut part = vec![0u8; len];
            fill(s, off as u64, &mut part);
            assert_eq!(part, whole[off..off + len]);
            assert!(verify(s, off as u64, &whole[off..off + len]));
        }
    }

    #[test]
    fn verify_catches_errors() {
        let s = seed(1);
        let mut buf = vec![0u8; 4096];
        fill(s, 0, &mut buf);
        assert!(verify(s, 0, &buf));
        assert!(!verify(seed(2), 0, &buf), "another block's bytes");
        assert!(!verify(s, 8, &buf), "shifted by a word");
        for i in [0, 7, 2048, 4095] {
            buf[i] ^= 1;
            assert!(!verify(s, 0, &buf), "flipped bit at {i}");
            buf[i] ^= 1;
        }
    }
}

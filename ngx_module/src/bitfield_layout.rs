//! The module's bindings against nginx's C compiler: the bitfields the module reads and writes
//! must sit at the same bits in both, or the module reads one flag for another (a distribution's
//! patch can make bindgen place them differently; see `build/bitfield_probe.rs`). Checked when
//! nginx reads its configuration, so that such a build fails `nginx -t` instead of serving.

use std::mem::{size_of, MaybeUninit};

/// Where a struct's bitfield sits: its first bit and its width, in the bytes of a struct of
/// `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    pub strukt: &'static str,
    pub field: &'static str,
    pub first_bit: i64,
    pub bits: u32,
    pub size: usize,
}

impl Place {
    /// The bindings' place of a field: the bits its setter sets, all ones, in a zeroed struct.
    fn of<T>(strukt: &'static str, field: &'static str, set: fn(&mut T)) -> Place {
        // SAFETY: the bindings' structs hold integers, raw pointers, optional function pointers
        // and arrays of them, for all of which all-zero bytes are a valid value.
        let mut value = unsafe { MaybeUninit::<T>::zeroed().assume_init() };
        set(&mut value);
        // SAFETY: the bytes of a live value of T, read as bytes for its size.
        let bytes =
            unsafe { std::slice::from_raw_parts(&value as *const T as *const u8, size_of::<T>()) };
        let (first_bit, bits) = set_bits(bytes);
        Place {
            strukt,
            field,
            first_bit,
            bits,
            size: size_of::<T>(),
        }
    }
}

/// The first set bit (counted from the lowest bit of the first byte; -1 if none) and how many
/// are set: the same count the C probe makes.
fn set_bits(bytes: &[u8]) -> (i64, u32) {
    let first = bytes
        .iter()
        .enumerate()
        .find(|(_, b)| **b != 0)
        .map_or(-1, |(i, b)| (i * 8) as i64 + i64::from(b.trailing_zeros()));
    (first, bytes.iter().map(|b| b.count_ones()).sum())
}

include!(concat!(env!("OUT_DIR"), "/bitfield_places.rs"));

/// What differs between the C compiler's places and the bindings', one line per field; empty
/// when they agree, or when the build could not run the C probe (a cross build).
pub(crate) fn mismatches() -> Vec<String> {
    let Some(c_places) = C_PLACES else {
        return Vec::new();
    };
    let bound = binding_places();
    let mut out = Vec::new();
    for b in &bound {
        match c_places
            .iter()
            .find(|c| c.strukt == b.strukt && c.field == b.field)
        {
            None => out.push(format!("{}.{} is not in the C probe", b.strukt, b.field)),
            Some(c) if c != b => out.push(format!(
                "{}.{}: C has {} bit(s) from bit {} of {} bytes, the bindings {} from bit {} of {}",
                b.strukt, b.field, c.bits, c.first_bit, c.size, b.bits, b.first_bit, b.size
            )),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bindings_place_every_bitfield_where_c_does() {
        assert!(C_PLACES.is_some(), "the C probe ran (not a cross build)");
        assert_eq!(mismatches(), Vec::<String>::new());
        assert_eq!(binding_places().len(), C_PLACES.unwrap().len());
    }

    #[test]
    fn set_bits_counts_from_the_lowest_bit_of_the_first_byte() {
        assert_eq!(set_bits(&[0, 0]), (-1, 0));
        assert_eq!(set_bits(&[0, 0b0001_1000, 0b1]), (11, 3));
    }
}

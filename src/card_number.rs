//! Card numbers: 19 digits = '8' + five-digit brand id + 12 random digits +
//! a Luhn check digit. The brand prefix lets any store tell at once that a
//! card belongs to another brand; the 12 random digits (10^12 numbers per
//! brand) make numbers impractical to guess; the check digit catches typos.
use rand::Rng;

/// Length of a card number in digits.
pub const CARD_DIGITS: usize = 19;

/// The Luhn check digit for `digits` (digit values 0..=9, without the
/// check digit).
fn luhn_check_digit(digits: &[u8]) -> u8 {
    luhn(digits.iter().copied())
}

/// Luhn over digit values given most significant first.
fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> u8 {
    let mut sum = 0u32;
    for (i, d) in digits.rev().enumerate() {
        let mut v = u32::from(d);
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    ((10 - (sum % 10)) % 10) as u8
}

/// The brand id encoded in a well-formed card number, or None if `card` is
/// not 19 digits with a valid prefix and check digit.
pub fn parse(card: &str) -> Option<u32> {
    parse_number(card).map(|(brand, _)| brand)
}

/// The brand id and the numeric value of a well-formed card number (as
/// [`parse`] checks it). Called on every card operation: one pass over the
/// digits, no allocation.
pub fn parse_number(card: &str) -> Option<(u32, u64)> {
    let bytes: &[u8; CARD_DIGITS] = card.as_bytes().try_into().ok()?;
    if bytes[0] != b'8' {
        return None;
    }
    // Value and Luhn sum in one pass. Luhn doubles every second digit from
    // the right of the body (the 18 digits before the check digit): the
    // digits at odd positions from the left; the check digit makes the sum
    // of all 19 a multiple of 10.
    let mut value = 0u64;
    let mut sum = 0u32;
    for (i, &b) in bytes.iter().enumerate() {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        value = value * 10 + u64::from(d);
        let d = u32::from(d);
        sum += if i % 2 == 1 {
            2 * d - 9 * u32::from(d > 4)
        } else {
            d
        };
    }
    if !sum.is_multiple_of(10) {
        return None;
    }
    // Five digits fit in u32; nineteen (below 9 * 10^18) fit in u64.
    let brand = u32::try_from(value / 10u64.pow(13) % 100_000).expect("five digits");
    Some((brand, value))
}

/// A fresh random card number for `brand_id` (which must be <= 99,999).
pub fn generate(brand_id: u32) -> String {
    assert!(brand_id <= crate::limits::MAX_BRAND_ID);
    let mut rng = rand::rngs::OsRng;
    let mut digits: Vec<u8> = Vec::with_capacity(CARD_DIGITS);
    digits.push(8);
    digits.extend(format!("{brand_id:05}").bytes().map(|b| b - b'0'));
    for _ in 0..12 {
        digits.push(rng.gen_range(0..10));
    }
    digits.push(luhn_check_digit(&digits));
    digits.iter().map(|d| char::from(b'0' + d)).collect()
}

/// The card number masked for receipts and logs: only the last four digits.
pub fn mask(card: &str) -> String {
    let tail: String = card
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_numbers_parse_to_their_brand() {
        for brand in [1, 42, 99_999] {
            let n = generate(brand);
            assert_eq!(n.len(), CARD_DIGITS);
            assert_eq!(parse(&n), Some(brand));
        }
    }

    #[test]
    fn parse_number_agrees_with_the_text() {
        for brand in [1, 42, 99_999] {
            let n = generate(brand);
            assert_eq!(parse_number(&n), Some((brand, n.parse().unwrap())));
        }
        for bad in [
            "",
            "8",
            "80000100000000000090",
            "7000010000000000009",
            "8000010000000000008",
        ] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
        assert_eq!(parse_number("８000010000000000009"), None);
    }

    #[test]
    fn a_single_digit_typo_fails_the_check() {
        let n = generate(7);
        let mut b = n.clone().into_bytes();
        b[10] = if b[10] == b'9' { b'0' } else { b[10] + 1 };
        assert_eq!(parse(std::str::from_utf8(&b).unwrap()), None);
    }

    #[test]
    fn known_luhn_vector() {
        // 7992739871 has check digit 3 (the classic Luhn example).
        assert_eq!(luhn_check_digit(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1]), 3);
    }

    #[test]
    fn masks_all_but_last_four() {
        assert_eq!(mask("8000010000000000009"), "****0009");
    }
}

//! Scans of upstream text on the request path that Python makes slowly.

/// Whether `text` holds `n` ASCII digits in a row (`n` > 0): a JSON body that may hold an
/// integer past 64 bits (`_json.loads`, n = 19), which orjson would read as a float. Probes
/// every `n`th byte while they are not digits, so a body with few digits costs about a
/// `n`th of its length; Python's translation of every byte and a substring search had cost
/// about 2,000 instructions a streamed piece of text (its JSON line).
pub fn has_digit_run(text: &[u8], n: usize) -> bool {
    assert!(n > 0, "a run of no digits is in every text");
    // Invariant: no run of `n` digits ends before `i`.
    let mut i = n - 1;
    while i < text.len() {
        if !text[i].is_ascii_digit() {
            i += n; // every run ending in i..i+n would hold text[i]
            continue;
        }
        let mut start = i;
        while start > 0 && i + 1 - start < n && text[start - 1].is_ascii_digit() {
            start -= 1;
        }
        let mut end = i + 1;
        while end < text.len() && end - start < n && text[end].is_ascii_digit() {
            end += 1;
        }
        if end - start >= n {
            return true;
        }
        // text[start - 1] (if any) and text[end] (if any) are no digits: a run holds neither
        i = end + n;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(text: &[u8], n: usize) -> bool {
        text.windows(n).any(|w| w.iter().all(u8::is_ascii_digit))
    }

    #[test]
    fn a_run_is_found_wherever_it_is_and_only_when_long_enough() {
        for n in 1..6 {
            for len in 0..14 {
                // every text of `len` bytes over {digit, other}
                for bits in 0u32..(1 << len) {
                    let text: Vec<u8> = (0..len)
                        .map(|k| if bits >> k & 1 == 1 { b'7' } else { b'x' })
                        .collect();
                    assert_eq!(has_digit_run(&text, n), naive(&text, n), "{text:?} {n}");
                }
            }
        }
        let mut body = br#"{"usage": {"prompt_tokens": 123456789012345678}}"#.to_vec();
        assert!(!has_digit_run(&body, 19));
        body.insert(30, b'9');
        assert!(has_digit_run(&body, 19));
    }
}

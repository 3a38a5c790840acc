//! The keys' spellings that `_redact` must not let through, and the two questions every
//! answer and every streamed piece asks of them: is any spelling in this text at all, and
//! how much of this text's end could be where one begins. A text that holds one is
//! scrubbed by the exact rules in Python; these only say when that is needed, and what a
//! stream must hold back.
//!
//! Texts are bytes: an answer's body as read, or a str's UTF-8 (`py.rs` passes an unpaired
//! surrogate as its three `surrogatepass` bytes, which no valid UTF-8 spelling matches, so
//! the answers are those of the str itself).

use memchr::memmem::Finder;

use crate::CoreError;

/// Spellings matched with ASCII letters in any case (the keys as registered, folded) and
/// spellings matched as they are (base64 spellings, a key that is not ASCII).
pub struct Spellings {
    finders: Vec<Finder<'static>>,
    folded: Vec<String>,
    exact: Vec<String>,
}

impl Spellings {
    pub fn new(folded: Vec<String>, exact: Vec<String>) -> Result<Self, CoreError> {
        if folded.iter().chain(&exact).any(|s| s.is_empty()) {
            return Err(CoreError::Input(
                "Spellings: an empty string occurs in every text".into(),
            ));
        }
        let folded: Vec<String> = folded.iter().map(|s| s.to_ascii_lowercase()).collect();
        let finders = folded
            .iter()
            .chain(&exact)
            .map(|s| Finder::new(&s.as_bytes().to_ascii_lowercase()).into_owned())
            .collect();
        Ok(Self {
            finders,
            folded,
            exact,
        })
    }

    /// Whether any spelling occurs in `text`, ASCII letters in any case (for the exact
    /// ones too: it may say yes where the exact rules find nothing, never the reverse).
    /// The text lower-cased once and each spelling looked for with memchr's SIMD substring
    /// search, where Python looked for each in turn, about 2,500 instructions apiece on a
    /// small answer (and aho-corasick's automaton took 15 instructions a byte).
    pub fn found_in(&self, text: &[u8]) -> bool {
        let low = text.to_ascii_lowercase();
        self.finders.iter().any(|f| f.find(&low).is_some())
    }

    /// How many characters at the end of `text` could be where a spelling begins: the
    /// longest end that is a proper start of one (a folded spelling's with ASCII letters in
    /// any case, an exact one's as it is), counted in characters; 0 when none.
    pub fn key_start(&self, text: &[u8]) -> usize {
        let Some(&last) = text.last() else {
            return 0;
        };
        let mut best: Option<&str> = None; // the longest start found, a spelling's prefix
        for (spellings, any_case) in [(&self.folded, true), (&self.exact, false)] {
            for s in spellings {
                let b = s.as_bytes();
                // proper starts, longest first, no longer than the text or the best so far
                let longest = (b.len() - 1).min(text.len());
                let shortest = best.map_or(1, |s| s.len() + 1);
                for k in (shortest..=longest).rev() {
                    let end = b[k - 1];
                    let same_end = if any_case {
                        end == last.to_ascii_lowercase()
                    } else {
                        end == last
                    };
                    if !same_end || !s.is_char_boundary(k) {
                        continue;
                    }
                    let tail = &text[text.len() - k..];
                    let same = if any_case {
                        tail.eq_ignore_ascii_case(&b[..k])
                    } else {
                        tail == &b[..k]
                    };
                    if same {
                        best = Some(&s[..k]);
                        break;
                    }
                }
            }
        }
        // the end matched is the start's own bytes, valid UTF-8: its characters are the end's
        best.map_or(0, |s| s.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(folded: &[&str], exact: &[&str]) -> Spellings {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        Spellings::new(v(folded), v(exact)).unwrap()
    }

    #[test]
    fn found_in_any_case_anywhere() {
        let s = sp(&["sk-abc123xyz"], &["clé-ß"]);
        for t in [
            "sk-abc123xyz",
            "x SK-ABC123XYZ y",
            "..sK-aBc123XyZ",
            "a clé-ß b",
        ] {
            assert!(s.found_in(t.as_bytes()), "{t}");
        }
        for t in ["", "sk-abc123xy", "CLÉ-ß", "sk-abc 123xyz"] {
            assert!(!s.found_in(t.as_bytes()), "{t}");
        }
        assert!(Spellings::new(vec!["ok".into()], vec!["".into()]).is_err());
    }

    #[test]
    fn key_start_is_the_longest_proper_start_in_characters() {
        let s = sp(&["thirdlookkeyabcd"], &["ÉTÉ-fourth-look", "QUJD"]);
        assert_eq!(s.key_start("before ÉT".as_bytes()), 2);
        // exact as it is: é is not É, so only the folded key's "t" starts there
        assert_eq!(s.key_start("before éT".as_bytes()), 1);
        assert_eq!(s.key_start("x THIRDLOOK".as_bytes()), 9); // folded: any case
        assert_eq!(s.key_start("x t".as_bytes()), 1);
        assert_eq!(s.key_start("QUJ".as_bytes()), 3);
        assert_eq!(s.key_start("quj".as_bytes()), 0);
        assert_eq!(s.key_start("QUJD".as_bytes()), 0); // whole: not a proper start
        assert_eq!(s.key_start("".as_bytes()), 0);
        assert_eq!(s.key_start("hello".as_bytes()), 0);
        // an unpaired surrogate's bytes (surrogatepass) match no start
        assert_eq!(s.key_start(b"x\xed\xa0\x80t"), 1);
        assert_eq!(s.key_start(b"x\xed\xa0\x80"), 0);
    }
}

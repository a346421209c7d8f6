//! A bounded copy of untrusted text, for errors that quote it.
//!
//! A Node's annotation value can be 256 KiB. An error quoting it whole is kept (the rejection
//! tracker, the first list's parse memo, the last pass summary for `/status`), rendered with
//! escapes (several times the bytes for control characters) and logged; quoting a prefix keeps
//! every such copy small whatever the input.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

/// At most this many bytes of the text are kept (cut back to a character boundary).
pub const EXCERPT_BYTES: usize = 128;

/// The first [`EXCERPT_BYTES`] of a text, with its full length. Two texts that share the prefix
/// and length but differ later still compare unequal (a digest of the whole text is kept), so a
/// change is still a change.
///
/// `{:?}` quotes it like a `String`'s Debug and `{}` shows it plain, as the whole text would be
/// shown when it fits; a cut text ends with `…` and its length.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Excerpt {
    head: Box<str>,
    /// Length in bytes of the whole text.
    len: usize,
    /// Of the whole text when it was cut; 0 otherwise.
    digest: u64,
}

impl Excerpt {
    pub fn new(text: &str) -> Self {
        let mut end = text.len().min(EXCERPT_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let digest = if end < text.len() {
            let mut h = DefaultHasher::new();
            text.hash(&mut h);
            h.finish()
        } else {
            0
        };
        Excerpt {
            head: text[..end].into(),
            len: text.len(),
            digest,
        }
    }

    /// The kept prefix (the whole text when [`Excerpt::is_whole`]).
    pub fn as_str(&self) -> &str {
        &self.head
    }

    /// Length in bytes of the whole text.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_whole(&self) -> bool {
        self.head.len() == self.len
    }

    fn write_cut(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_whole() {
            Ok(())
        } else {
            write!(f, "… ({} bytes)", self.len)
        }
    }
}

impl fmt::Debug for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.head)?;
        self.write_cut(f)
    }
}

impl fmt::Display for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.head)?;
        self.write_cut(f)
    }
}

impl From<&str> for Excerpt {
    fn from(text: &str) -> Self {
        Excerpt::new(text)
    }
}

impl From<String> for Excerpt {
    fn from(text: String) -> Self {
        Excerpt::new(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_text_is_kept_whole_and_shown_as_before() {
        let e = Excerpt::new("tru\"e");
        assert!(e.is_whole());
        assert_eq!(format!("{e:?}"), format!("{:?}", "tru\"e"));
        assert_eq!(e.to_string(), "tru\"e");
        assert_eq!(format!("{:?}", Some(e)), r#"Some("tru\"e")"#);
        assert_eq!(Excerpt::new(""), Excerpt::from(String::new()));
    }

    #[test]
    fn a_256_kib_value_yields_a_bounded_copy_and_rendering() {
        // Control characters: Debug escapes each one as `\u{1}`, six times the bytes.
        let hostile = "\u{1}".repeat(256 << 10);
        let e = Excerpt::new(&hostile);
        assert!(!e.is_whole());
        assert_eq!(e.len(), 256 << 10);
        assert_eq!(e.as_str().len(), EXCERPT_BYTES);
        let debug = format!("{e:?}");
        assert!(debug.len() < 8 * EXCERPT_BYTES, "{} bytes", debug.len());
        assert!(debug.ends_with("… (262144 bytes)"), "{debug}");
        assert!(e.to_string().len() < 2 * EXCERPT_BYTES);
    }

    #[test]
    fn the_cut_falls_on_a_character_boundary() {
        let text = format!("{}é{}", "a".repeat(EXCERPT_BYTES - 1), "b".repeat(10));
        let e = Excerpt::new(&text);
        assert_eq!(e.as_str(), "a".repeat(EXCERPT_BYTES - 1));
        assert_eq!(e.len(), text.len());
    }

    #[test]
    fn texts_that_differ_only_past_the_cut_are_still_unequal() {
        let a = format!("{}a", "x".repeat(1000));
        let b = format!("{}b", "x".repeat(1000));
        assert_ne!(Excerpt::new(&a), Excerpt::new(&b));
        assert_eq!(Excerpt::new(&a), Excerpt::new(&a.clone()));
        assert_eq!(Excerpt::new(&a).as_str(), Excerpt::new(&b).as_str());
    }
}

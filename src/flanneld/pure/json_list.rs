//! Splitting a JSON list response (`{"kind":…,"metadata":{…},"items":[{…},{…}]}`) into its
//! items while its bytes arrive, so that each item is handled on its own and the page is never
//! held whole. Everything outside the items — kind, the list's metadata with its continue
//! token, the commas between items — is "the shell" and passes through unchanged; each item is
//! handed over once its closing brace is seen, and what the handler writes takes its place.
//!
//! Only the brackets and strings are tracked (no validation): whoever decodes the items and
//! the shell still rejects malformed JSON.

use memchr::memchr2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListSplitError {
    #[error("a list item is not a JSON object")]
    ItemNotObject,
    #[error("unbalanced JSON: a closing bracket without an opening one")]
    Unbalanced,
    #[error("the list response ended inside a value")]
    Truncated,
}

/// The top-level key whose array holds the items.
const ITEMS_KEY: &[u8] = b"items";

/// An item gathered up to this capacity keeps its buffer for the next one; a larger (hostile)
/// one gives it back.
const KEEP_ITEM_CAPACITY: usize = 64 << 10;

/// The state between two chunks of one response.
#[derive(Debug, Default)]
pub struct ListSplitter {
    /// Open brackets (objects and arrays) around the current position.
    depth: u32,
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escaped: bool,
    /// The last string at the top level, if it may still be `items`: the key of a value that
    /// opens there.
    top_string: Vec<u8>,
    top_string_is_other: bool,
    /// Inside the top-level `items` array.
    in_items: bool,
    /// Inside an item (from its `{`), whose bytes so far are in `item`.
    in_item: bool,
    item: Vec<u8>,
}

impl ListSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next bytes of the response: shell bytes are appended to `out` as they are;
    /// each complete item is passed to `on_item` (with `out`, to append its replacement).
    pub fn feed<E: From<ListSplitError>>(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<u8>,
        mut on_item: impl FnMut(&[u8], &mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        // Bytes from `run` on go to the current sink (the item, or `out`) in one copy.
        let mut run = 0;
        let mut i = 0;
        while i < chunk.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    self.top_string_is_other = true;
                    i += 1;
                    continue;
                }
                let rest = &chunk[i..];
                match memchr2(b'"', b'\\', rest) {
                    None => {
                        self.capture(rest);
                        i = chunk.len();
                    }
                    Some(k) => {
                        self.capture(&rest[..k]);
                        if rest[k] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                        }
                        i += k + 1;
                    }
                }
                continue;
            }
            let at_item_level = self.in_items && self.depth == 2 && !self.in_item;
            match chunk[i] {
                b'"' => {
                    if at_item_level {
                        return Err(ListSplitError::ItemNotObject.into());
                    }
                    self.in_string = true;
                    if self.depth == 1 {
                        self.top_string.clear();
                        self.top_string_is_other = false;
                    }
                }
                b @ (b'{' | b'[') => {
                    if at_item_level {
                        if b != b'{' {
                            return Err(ListSplitError::ItemNotObject.into());
                        }
                        out.extend_from_slice(&chunk[run..i]);
                        run = i;
                        self.in_item = true;
                    } else if self.depth == 1
                        && b == b'['
                        && !self.top_string_is_other
                        && self.top_string == ITEMS_KEY
                    {
                        self.in_items = true;
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        return Err(ListSplitError::Unbalanced.into());
                    }
                    self.depth -= 1;
                    if self.in_item && self.depth == 2 {
                        self.item.extend_from_slice(&chunk[run..=i]);
                        run = i + 1;
                        self.in_item = false;
                        let item = std::mem::take(&mut self.item);
                        let handled = on_item(&item, out);
                        self.item = item;
                        self.item.clear();
                        if self.item.capacity() > KEEP_ITEM_CAPACITY {
                            self.item = Vec::new();
                        }
                        handled?;
                    } else if self.in_items && self.depth == 1 {
                        self.in_items = false;
                    }
                }
                b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' => {}
                _ => {
                    if at_item_level {
                        return Err(ListSplitError::ItemNotObject.into());
                    }
                }
            }
            i += 1;
        }
        let rest = &chunk[run..];
        if self.in_item {
            self.item.extend_from_slice(rest);
        } else {
            out.extend_from_slice(rest);
        }
        Ok(())
    }

    /// The response ended: an error if it ended inside a value.
    pub fn finish(&self) -> Result<(), ListSplitError> {
        if self.depth != 0 || self.in_string || self.in_item {
            return Err(ListSplitError::Truncated);
        }
        Ok(())
    }

    /// Part of a string's text at the current depth (only the top level's is kept, and only
    /// while it can still be the items key).
    fn capture(&mut self, text: &[u8]) {
        if self.depth != 1 || self.top_string_is_other {
            return;
        }
        if self.top_string.len() + text.len() > ITEMS_KEY.len() {
            self.top_string_is_other = true;
        } else {
            self.top_string.extend_from_slice(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `input` fed in chunks of `chunk` bytes; items are replaced by `<N>`.
    fn split(input: &str, chunk: usize) -> Result<(String, Vec<String>), ListSplitError> {
        let mut s = ListSplitter::new();
        let mut out = Vec::new();
        let mut items = Vec::new();
        for part in input.as_bytes().chunks(chunk) {
            s.feed(part, &mut out, |item, out| {
                items.push(String::from_utf8(item.to_vec()).unwrap());
                out.extend_from_slice(format!("<{}>", items.len()).as_bytes());
                Ok::<_, ListSplitError>(())
            })?;
        }
        s.finish()?;
        Ok((String::from_utf8(out).unwrap(), items))
    }

    /// Every chunking, from one byte at a time to the whole input at once.
    fn split_every_way(input: &str) -> Result<(String, Vec<String>), ListSplitError> {
        let whole = split(input, input.len().max(1));
        for chunk in 1..input.len() {
            assert_eq!(split(input, chunk), whole, "chunks of {chunk}");
        }
        whole
    }

    #[test]
    fn items_are_cut_out_and_the_shell_passes_through_whatever_the_chunking() {
        let list = r#"{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"12","continue":"eyJ9"},
            "items":[ {"metadata":{"name":"a"}} , {"metadata":{"name":"b","labels":{"x":"[{"}},"spec":{}}]}"#;
        let (shell, items) = split_every_way(list).unwrap();
        assert_eq!(
            items,
            [
                r#"{"metadata":{"name":"a"}}"#,
                r#"{"metadata":{"name":"b","labels":{"x":"[{"}},"spec":{}}"#
            ]
        );
        assert_eq!(
            shell,
            r#"{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"12","continue":"eyJ9"},
            "items":[ <1> , <2>]}"#
        );
    }

    #[test]
    fn brackets_quotes_and_escapes_inside_strings_do_not_count() {
        let list = r#"{"items":[{"a":"}]\"{[\\","b":"\\"},{"c":"\"items\":["}],"x":"]"}"#;
        let (shell, items) = split_every_way(list).unwrap();
        assert_eq!(
            items,
            [r#"{"a":"}]\"{[\\","b":"\\"}"#, r#"{"c":"\"items\":["}"#]
        );
        assert_eq!(shell, r#"{"items":[<1>,<2>],"x":"]"}"#);
    }

    #[test]
    fn only_the_top_level_items_array_holds_items() {
        // An `items` key deeper down, a top-level value "items", a longer key with that prefix.
        let list = r#"{"metadata":{"items":[{"no":1}]},"kind":"items","itemsX":[{"no":2}],"items":[{"yes":3}]}"#;
        let (shell, items) = split_every_way(list).unwrap();
        assert_eq!(items, [r#"{"yes":3}"#]);
        assert_eq!(
            shell,
            r#"{"metadata":{"items":[{"no":1}]},"kind":"items","itemsX":[{"no":2}],"items":[<1>]}"#
        );
        // A key spelled with an escape is not taken for `items` (Kubernetes never writes one).
        let (_, items) = split_every_way(r#"{"\u0069tems":[{"a":1}]}"#).unwrap();
        assert!(items.is_empty());
    }

    #[test]
    fn a_response_without_items_passes_through_whole() {
        let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":410}"#;
        assert_eq!(
            split_every_way(status).unwrap(),
            (status.to_string(), vec![])
        );
        let empty = r#"{"kind":"NodeList","items":[]}"#;
        assert_eq!(split_every_way(empty).unwrap(), (empty.to_string(), vec![]));
    }

    #[test]
    fn malformed_lists_are_errors() {
        assert_eq!(
            split(r#"{"items":[1]}"#, 4),
            Err(ListSplitError::ItemNotObject)
        );
        assert_eq!(
            split(r#"{"items":["a"]}"#, 4),
            Err(ListSplitError::ItemNotObject)
        );
        assert_eq!(
            split(r#"{"items":[[]]}"#, 4),
            Err(ListSplitError::ItemNotObject)
        );
        assert_eq!(split(r#"{}}"#, 1), Err(ListSplitError::Unbalanced));
        assert_eq!(
            split(r#"{"items":[{"a":1}"#, 3),
            Err(ListSplitError::Truncated)
        );
        assert_eq!(
            split(r#"{"items":[{"a":"1"#, 3),
            Err(ListSplitError::Truncated)
        );
    }

    #[test]
    fn a_handler_error_stops_the_split() {
        let mut s = ListSplitter::new();
        let mut out = Vec::new();
        let err = s
            .feed(br#"{"items":[{"a":1}]}"#, &mut out, |_, _| {
                Err(ListSplitError::Truncated)
            })
            .unwrap_err();
        assert_eq!(err, ListSplitError::Truncated);
    }

    #[test]
    fn a_huge_item_does_not_keep_its_buffer() {
        let big = "x".repeat(256 << 10);
        let list = format!(r#"{{"items":[{{"a":"{big}"}},{{"b":1}}]}}"#);
        let mut s = ListSplitter::new();
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        for part in list.as_bytes().chunks(16 << 10) {
            s.feed(part, &mut out, |item, _| {
                sizes.push(item.len());
                Ok::<_, ListSplitError>(())
            })
            .unwrap();
        }
        s.finish().unwrap();
        assert_eq!(sizes, [big.len() + 8, 7]);
        assert!(s.item.capacity() <= KEEP_ITEM_CAPACITY);
    }
}

//! Structured Field Values (RFC 9651, which obsoletes RFC 8941): the parsing the layer needs to
//! decide what a request's fields say, done as the RFC's algorithm does it.
//!
//! Only what the layer reads is here: whether a whole field value is one valid Item, and of
//! which type. Parsing is strict: a value that is not exactly one Item, bare item and parameters
//! both checked, is refused as a whole (§4.2: "fail parsing"), never read loosely. It makes one
//! pass over the bytes and allocates nothing.

/// The type of an Item's bare item (RFC 9651 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BareItemType {
    Integer,
    Decimal,
    /// A String, with the number of characters it holds once unescaped.
    String {
        len: usize,
    },
    Token,
    ByteSequence,
    Boolean,
    Date,
    DisplayString,
}

/// The type of the Item a whole field value holds, or `None` when the value is not exactly one
/// valid Item (with its parameters).
///
/// Leading and trailing spaces are allowed, as RFC 9651 §4.2 discards them; anything else around
/// the Item (a second list member after a comma, a tab) fails.
pub(crate) fn item_type(value: &[u8]) -> Option<BareItemType> {
    let mut cursor = Cursor { rest: value };
    cursor.skip_spaces();
    let item = cursor.bare_item()?;
    cursor.parameters()?;
    cursor.skip_spaces();
    cursor.rest.is_empty().then_some(item)
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.rest = &self.rest[1..];
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        while self.eat(b' ') {}
    }

    /// §4.2.3, parsing a bare item.
    fn bare_item(&mut self) -> Option<BareItemType> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string().map(|len| BareItemType::String { len }),
            b if b.is_ascii_alphabetic() || b == b'*' => {
                self.token();
                Some(BareItemType::Token)
            }
            b':' => self.byte_sequence().then_some(BareItemType::ByteSequence),
            b'?' => self.boolean().then_some(BareItemType::Boolean),
            b'@' => {
                self.bump();
                (self.number()? == BareItemType::Integer).then_some(BareItemType::Date)
            }
            b'%' => self.display_string().then_some(BareItemType::DisplayString),
            _ => None,
        }
    }

    /// §4.2.3, parsing parameters: `;key[=value]`, any number of them.
    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_spaces();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    /// §4.2.3, parsing a key: `( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`.
    fn key(&mut self) -> Option<()> {
        match self.bump()? {
            b'a'..=b'z' | b'*' => {}
            _ => return None,
        }
        while let Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*') = self.peek() {
            self.bump();
        }
        Some(())
    }

    /// §4.2.4: an Integer of at most 15 digits, or a Decimal of at most 12 digits, a dot and 1 to
    /// 3 more.
    fn number(&mut self) -> Option<BareItemType> {
        self.eat(b'-');
        let mut integer_digits = 0;
        let mut fraction_digits = None;
        while let Some(b) = self.peek() {
            match (b, fraction_digits.as_mut()) {
                (b'0'..=b'9', None) => integer_digits += 1,
                (b'0'..=b'9', Some(n)) => *n += 1,
                (b'.', None) if integer_digits > 0 => fraction_digits = Some(0),
                _ => break,
            }
            self.bump();
            if integer_digits > 15 || (fraction_digits.is_some() && integer_digits > 12) {
                return None;
            }
        }
        match fraction_digits {
            None if integer_digits > 0 => Some(BareItemType::Integer),
            Some(1..=3) => Some(BareItemType::Decimal),
            _ => None,
        }
    }

    /// §4.2.5: the number of characters once unescaped.
    fn string(&mut self) -> Option<usize> {
        self.bump();
        let mut len = 0;
        loop {
            match self.bump()? {
                b'\\' => match self.bump()? {
                    b'"' | b'\\' => len += 1,
                    _ => return None,
                },
                b'"' => return Some(len),
                0x20..=0x7e => len += 1,
                _ => return None,
            }
        }
    }

    /// §4.2.6: `( ALPHA / "*" ) *( tchar / ":" / "/" )`.
    fn token(&mut self) {
        self.bump();
        while let Some(b) = self.peek() {
            if !(super::is_tchar(b) || b == b':' || b == b'/') {
                break;
            }
            self.bump();
        }
    }

    /// §4.2.7: `:` base64 `:`. Padding may be left out, or given in part (the decoder
    /// "synthesizes padding if necessary", and recipients "SHOULD NOT fail" on its absence); a
    /// `=` anywhere but at the end, more of them than the last group lacks, or a length no base64
    /// text can have, fails.
    fn byte_sequence(&mut self) -> bool {
        self.bump();
        let mut symbols = 0usize;
        let mut padding = 0usize;
        loop {
            match self.bump() {
                Some(b':') => break,
                Some(b'=') => padding += 1,
                Some(b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/') if padding == 0 => {
                    symbols += 1
                }
                _ => return false,
            }
        }
        // One symbol short of a byte, or more padding than the last group lacks, is no base64.
        let last_group = symbols % 4;
        last_group != 1 && (padding == 0 || (last_group != 0 && last_group + padding <= 4))
    }

    /// §4.2.8: `?0` or `?1`.
    fn boolean(&mut self) -> bool {
        self.bump();
        matches!(self.bump(), Some(b'0' | b'1'))
    }

    /// §4.2.10: `%"`, printable ASCII but `%` and `"`, or `%` and two lowercase hex digits, then
    /// `"`; the percent-decoded bytes must be UTF-8.
    fn display_string(&mut self) -> bool {
        self.bump();
        if !self.eat(b'"') {
            return false;
        }
        // The UTF-8 check runs on the decoded bytes as they come, without a buffer.
        let mut utf8 = Utf8Check::default();
        loop {
            let byte = match self.bump() {
                Some(b'"') => return utf8.complete(),
                Some(b'%') => {
                    let (Some(high), Some(low)) = (self.bump(), self.bump()) else {
                        return false;
                    };
                    match (lower_hex(high), lower_hex(low)) {
                        (Some(high), Some(low)) => high << 4 | low,
                        _ => return false,
                    }
                }
                Some(b @ 0x20..=0x7e) => b,
                _ => return false,
            };
            if !utf8.push(byte) {
                return false;
            }
        }
    }
}

fn lower_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Checks UTF-8 a byte at a time, as the standard library's decoder does (no overlong forms, no
/// surrogates, nothing above U+10FFFF).
#[derive(Default)]
struct Utf8Check {
    /// Continuation bytes still expected.
    pending: u8,
    /// The allowed range of the next continuation byte (narrower right after some lead bytes).
    next_low: u8,
    next_high: u8,
}

impl Utf8Check {
    fn push(&mut self, b: u8) -> bool {
        if self.pending > 0 {
            if !(self.next_low..=self.next_high).contains(&b) {
                return false;
            }
            self.pending -= 1;
            (self.next_low, self.next_high) = (0x80, 0xbf);
            return true;
        }
        let (pending, low, high) = match b {
            0x00..=0x7f => return true,
            0xc2..=0xdf => (1, 0x80, 0xbf),
            0xe0 => (2, 0xa0, 0xbf),
            0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
            0xed => (2, 0x80, 0x9f),
            0xf0 => (3, 0x90, 0xbf),
            0xf1..=0xf3 => (3, 0x80, 0xbf),
            0xf4 => (3, 0x80, 0x8f),
            _ => return false,
        };
        (self.pending, self.next_low, self.next_high) = (pending, low, high);
        true
    }

    fn complete(&self) -> bool {
        self.pending == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_with_parameters() {
        assert_eq!(
            item_type(br#""8e03978e-40d5""#),
            Some(BareItemType::String { len: 13 })
        );
        assert_eq!(
            item_type(br#" "a\"b" "#),
            Some(BareItemType::String { len: 3 })
        );
        // A parameter's string may hold a comma; it is still one item.
        assert_eq!(
            item_type(br#""k";note="a, b";n=1;flag"#),
            Some(BareItemType::String { len: 1 })
        );
        assert_eq!(
            item_type(br#""k"; x=?1;y=@1700000000;z=:AQID:;w=%"caf%c3%a9""#),
            Some(BareItemType::String { len: 1 })
        );
    }

    #[test]
    fn what_is_not_one_item() {
        for bad in [
            &br#""a", "b""#[..],
            br#""a";"#,
            br#""a";K=1"#,
            br#""a";k=,"#,
            br#""a";k=1.2345"#,
            br#""a" x"#,
            b"\t\"a\"",
            br#""unterminated"#,
            br#""a\x""#,
            b"\"caf\xc3\xa9\"",
            br#""a";k=:A:"#,
            br#""a";k=:AB=C:"#,
            br#""a";k=%"%C3%A9""#,
            br#""a";k=%"%ff""#,
            br#""a";k=?2"#,
            br#""a";k=@1.5"#,
            b"",
            b"1234567890123456",
            b"1234567890123.1",
        ] {
            assert_eq!(item_type(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn every_bare_item_type() {
        use BareItemType::*;
        for (value, expected) in [
            (&b"-12"[..], Integer),
            (b"123456789012345", Integer),
            (b"3.14", Decimal),
            (b"123456789012.123", Decimal),
            (b"foo/bar:baz", Token),
            (b"*", Token),
            (b":aGVsbG8=:", ByteSequence),
            (b":aGVsbG8:", ByteSequence),
            (b"::", ByteSequence),
            (b"?0", Boolean),
            (b"@-62135596800", Date),
            (br#"%"f%c3%bc%c3%bc""#, DisplayString),
        ] {
            assert_eq!(
                item_type(value),
                Some(expected),
                "{:?}",
                std::string::String::from_utf8_lossy(value)
            );
        }
    }

    /// The same question asked of the `sfv` crate, an independent RFC 9651 parser.
    fn reference(value: &[u8]) -> Option<BareItemType> {
        use sfv::BareItem as B;
        let item = sfv::Parser::new(value).parse::<sfv::Item>().ok()?;
        Some(match item.bare_item {
            B::Integer(_) => BareItemType::Integer,
            B::Decimal(_) => BareItemType::Decimal,
            B::String(s) => BareItemType::String {
                len: s.as_str().len(),
            },
            B::Token(_) => BareItemType::Token,
            B::ByteSequence(_) => BareItemType::ByteSequence,
            B::Boolean(_) => BareItemType::Boolean,
            B::Date(_) => BareItemType::Date,
            B::DisplayString(_) => BareItemType::DisplayString,
        })
    }

    /// Field values near the grammar: a string item with parameters of every type, spaces,
    /// escapes and commas, pieces of which the mutations below break.
    fn near_items() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let string = r#""([ !#-\[\]-~]|\\["\\]){0,12}""#;
        let bare = prop_oneof![
            proptest::string::string_regex(string).unwrap(),
            proptest::string::string_regex("-?[0-9]{1,16}(\\.[0-9]{0,4})?").unwrap(),
            proptest::string::string_regex("[a-zA-Z*][a-zA-Z0-9:/!#$%&'*+.^_`|~-]{0,8}").unwrap(),
            proptest::string::string_regex(":[A-Za-z0-9+/=]{0,9}:").unwrap(),
            proptest::string::string_regex("\\?[0-2]").unwrap(),
            proptest::string::string_regex("@-?[0-9]{1,4}(\\.[0-9])?").unwrap(),
            proptest::string::string_regex("%\"([ !#$&-~]|%[0-9a-fA-F]{2}){0,6}\"").unwrap(),
        ];
        let key = proptest::string::string_regex("[a-z*A-Z_0-9][a-z0-9_.*-]{0,4}").unwrap();
        let param =
            (key, proptest::option::of(bare.clone()), " {0,1}").prop_map(|(key, value, space)| {
                match value {
                    Some(value) => format!(";{space}{key}={value}"),
                    None => format!(";{space}{key}"),
                }
            });
        (
            " {0,2}",
            bare,
            proptest::collection::vec(param, 0..4),
            "( {0,2}|,| ,\"x\"|\t)",
        )
            .prop_map(|(lead, bare, params, tail)| {
                format!("{lead}{bare}{}{tail}", params.concat()).into_bytes()
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        #[test]
        fn agrees_with_a_reference_parser_near_the_grammar(value in near_items()) {
            proptest::prop_assert_eq!(
                item_type(&value),
                reference(&value),
                "{:?}",
                std::string::String::from_utf8_lossy(&value)
            );
        }

        #[test]
        fn agrees_with_a_reference_parser_on_any_bytes(
            value in proptest::collection::vec(
                proptest::sample::select(&b" \t\"\\;=,:?@%*./-_aAz09+~\x7f\xc3\xa9"[..]),
                0..24,
            )
        ) {
            proptest::prop_assert_eq!(
                item_type(&value),
                reference(&value),
                "{:?}",
                std::string::String::from_utf8_lossy(&value)
            );
        }
    }
}

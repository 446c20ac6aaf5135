//! Character rules for text bound for the provider, and the folding that makes look-alike
//! values equal.
//!
//! A value that reaches a provider or a bank is shown to people and printed on statements.
//! Control characters (NUL, ESC and its ANSI sequences, tab, line breaks, the C1 block) and
//! invisible format characters (zero-width spaces and joiners, the byte-order mark, bidi
//! overrides and isolates that make `gro.kcatta` read as `attack.org`) are mangled or dropped
//! on the way, or make two different values look the same: `first_hostile` finds them.
//! A line break (LF; CRLF arrives as LF) inside a quoted CSV cell is the one control character
//! a text cell may hold: payroll exports carry multi-line addresses, and the example batch and
//! the corpus hold them as valid. Tab, a lone CR and every other control character are refused;
//! ids allow no line break either.
//!
//! Item ids are compared as people read them: `fold_id` applies Unicode NFKC (fullwidth
//! `Ｅ０１００１` is `E01001`) and lowercases (`e01001` is `E01001`). Account identifiers of the
//! recipient are compared with spaces and hyphens removed, uppercased, after NFKC
//! (`recipient_into`). Plain ASCII, which nearly every payroll row is, takes paths that neither
//! allocate nor decode characters.

use std::borrow::Cow;
use std::hash::BuildHasher;
use unicode_normalization::UnicodeNormalization;

/// Why a character is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A control character (Unicode Cc: C0, DEL, C1), tab and line breaks included.
    Control,
    /// An invisible format character (Unicode Cf) or a line/paragraph separator.
    Invisible,
}

/// The first refused character of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hostile {
    pub ch: char,
    /// 1-based position in characters (not bytes) within the value.
    pub at: usize,
    pub kind: Kind,
}

impl Hostile {
    /// "U+202E RIGHT-TO-LEFT OVERRIDE at character 7".
    pub fn describe(&self) -> String {
        format!("{} at character {}", name(self.ch), self.at)
    }

    /// The rule of a value bound for the provider that holds this character.
    pub fn rule(&self) -> &'static str {
        match self.kind {
            Kind::Control => "text.control-character",
            Kind::Invisible => "text.invisible-character",
        }
    }
}

/// Whether every byte is printable ASCII (0x20..=0x7E): the common case, checked eight bytes
/// at a time (word-wise bit tricks: a high bit, a byte below 0x20, a byte equal to 0x7F).
#[inline]
pub fn printable_ascii(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = b.chunks_exact(8);
    let mut bad = 0u64;
    for w in &mut words {
        let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        let below_space = w.wrapping_sub(ONES * 0x20) & !w;
        let del = w ^ (ONES * 0x7f);
        let is_del = del.wrapping_sub(ONES) & !del;
        bad |= (w | below_space | is_del) & HIGH;
    }
    bad == 0
        && words
            .remainder()
            .iter()
            .all(|&x| x.wrapping_sub(0x20) < 0x5f)
}

/// The first control or invisible character of `s`, if any; a line break (LF) counts only
/// when `line_breaks` is false.
pub fn first_hostile(s: &str, line_breaks: bool) -> Option<Hostile> {
    if printable_ascii(s.as_bytes()) {
        return None;
    }
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if (b < 0x20 && !(line_breaks && b == b'\n')) || b == 0x7f {
            return Some(Hostile {
                ch: b as char,
                at: i + 1,
                kind: Kind::Control,
            });
        }
        if b >= 0x80 {
            // Bytes before `i` are ASCII: one character each.
            return s[i..].chars().enumerate().find_map(|(k, ch)| {
                if line_breaks && ch == '\n' {
                    return None;
                }
                kind_of(ch).map(|kind| Hostile {
                    ch,
                    at: i + k + 1,
                    kind,
                })
            });
        }
    }
    None
}

fn kind_of(ch: char) -> Option<Kind> {
    // Most non-ASCII text is Latin letters below U+0600, where only C1 and the soft hyphen count.
    let c = ch as u32;
    if c < 0x600 {
        return match c {
            0..=0x1f | 0x7f..=0x9f => Some(Kind::Control),
            0xad => Some(Kind::Invisible),
            _ => None,
        };
    }
    if ch.is_control() {
        Some(Kind::Control)
    } else if is_invisible(ch) {
        Some(Kind::Invisible)
    } else {
        None
    }
}

/// Unicode's format characters (general category Cf, Unicode 15.1) and the line and paragraph
/// separators (Zl, Zp).
fn is_invisible(ch: char) -> bool {
    matches!(ch,
        '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061C}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}'
        | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}')
}

/// "U+200B ZERO WIDTH SPACE": the code point and, for the characters met in practice, the
/// Unicode name.
pub fn name(ch: char) -> String {
    let n = match ch {
        '\0' => "NULL",
        '\t' => "CHARACTER TABULATION (tab)",
        '\n' => "LINE FEED (line break)",
        '\r' => "CARRIAGE RETURN (line break)",
        '\u{1B}' => "ESCAPE (starts an ANSI terminal sequence)",
        '\u{7F}' => "DELETE",
        '\u{85}' => "NEXT LINE",
        '\u{00AD}' => "SOFT HYPHEN",
        '\u{061C}' => "ARABIC LETTER MARK",
        '\u{180E}' => "MONGOLIAN VOWEL SEPARATOR",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2060}' => "WORD JOINER",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE (byte-order mark)",
        c if (c as u32) < 0x20 => "control character",
        c if c.is_control() => "C1 control character",
        _ => "invisible format character",
    };
    format!("U+{:04X} {n}", ch as u32)
}

/// `s` quoted, with every character that is not printable ASCII written as `\u{…}`, so that
/// two values that look the same on screen show their difference.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            ' '..='~' => out.push(ch),
            _ => out.push_str(&format!("\\u{{{:X}}}", ch as u32)),
        }
    }
    out.push('"');
    out
}

/// `s` with its control and invisible characters written as `\u{…}`, for showing a value
/// whose hidden characters would otherwise act on the terminal or vanish; borrowed when it has
/// none.
pub fn visible(s: &str) -> Cow<'_, str> {
    if first_hostile(s, false).is_none() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        if kind_of(ch).is_some() {
            out.push_str(&format!("\\u{{{:X}}}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

/// An item id as ids are compared: NFKC, then lowercase (then NFKC again, as lowercasing can
/// leave a composable sequence). Borrowed when `id` is already folded ASCII.
pub fn fold_id(id: &str) -> Cow<'_, str> {
    if id.is_ascii() {
        if id.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(id.to_ascii_lowercase())
        } else {
            Cow::Borrowed(id)
        }
    } else {
        let lower = id.nfkc().collect::<String>().to_lowercase();
        Cow::Owned(lower.nfkc().collect())
    }
}

/// The hash of `fold_id(id)`, without allocating for an ASCII id of up to 128 bytes (the
/// longest id that passes `item.id-format`).
pub fn id_hash<S: BuildHasher>(hasher: &S, id: &str) -> u64 {
    let b = id.as_bytes();
    if b.len() <= 128 && b.is_ascii() {
        let mut buf = [0u8; 128];
        for (d, s) in buf.iter_mut().zip(b) {
            *d = s.to_ascii_lowercase();
        }
        return hasher.hash_one(&buf[..b.len()]);
    }
    hasher.hash_one(fold_id(id).as_bytes())
}

/// Appends an account identifier as recipients are compared: NFKC, without whitespace and
/// hyphens (`GB86 BARC-1510…` is `GB86BARC1510…`), uppercased.
pub fn recipient_into(s: &str, out: &mut Vec<u8>) {
    if s.is_ascii() {
        let start = out.len();
        if memchr::memchr3(b' ', b'-', b'\t', s.as_bytes()).is_none() {
            out.extend_from_slice(s.as_bytes());
        } else {
            out.extend(s.bytes().filter(|b| !matches!(b, b' ' | b'-' | b'\t')));
        }
        out[start..].make_ascii_uppercase();
    } else {
        let mut tmp = [0u8; 4];
        for ch in s.nfkc() {
            if ch.is_whitespace() || matches!(ch, '-' | '\u{2010}'..='\u{2015}' | '\u{2212}') {
                continue;
            }
            for up in ch.to_uppercase() {
                out.extend_from_slice(up.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile(s: &str) -> Option<(u32, usize, &'static str)> {
        first_hostile(s, false).map(|h| (h.ch as u32, h.at, h.rule()))
    }

    #[test]
    fn a_line_break_is_allowed_only_where_asked_and_nothing_else_is() {
        assert_eq!(first_hostile("60 rue de Rivoli\nc/o Nord", true), None);
        assert_eq!(first_hostile("Müller\nStraße 1", true), None);
        assert_eq!(
            first_hostile("a\nb\tc", true).map(|h| (h.ch, h.at)),
            Some(('\t', 4))
        );
        assert_eq!(first_hostile("a\rb", true).map(|h| h.ch), Some('\r'));
        assert_eq!(first_hostile("E1\n", false).map(|h| h.at), Some(3));
    }

    #[test]
    fn plain_text_in_any_script_passes() {
        for s in [
            "E01001",
            "Paul Richter",
            "Müller-Lüdenscheidt",
            "Ærøskøbing",
            "محمد",
            "李小龙",
            "O'Brien & Sons, Ltd.",
            "",
        ] {
            assert_eq!(hostile(s), None, "{s:?}");
        }
    }

    #[test]
    fn control_characters_are_found_with_their_character_position() {
        assert_eq!(hostile("ab\0c"), Some((0, 3, "text.control-character")));
        assert_eq!(
            hostile("\u{1b}[31mred"),
            Some((0x1b, 1, "text.control-character"))
        );
        assert_eq!(hostile("a\tb"), Some((9, 2, "text.control-character")));
        assert_eq!(hostile("a\r\nb"), Some((13, 2, "text.control-character")));
        assert_eq!(
            hostile("x\u{7f}"),
            Some((0x7f, 2, "text.control-character"))
        );
        assert_eq!(
            hostile("é\u{85}"),
            Some((0x85, 2, "text.control-character"))
        );
        assert_eq!(
            hostile("éé\u{9b}"),
            Some((0x9b, 3, "text.control-character"))
        );
    }

    #[test]
    fn printable_ascii_is_exact_for_every_byte_at_every_position() {
        for pos in 0..20 {
            for x in 0u8..=255 {
                let mut v = vec![b'a'; 20];
                v[pos] = x;
                assert_eq!(
                    printable_ascii(&v),
                    (0x20..=0x7e).contains(&x),
                    "byte {x:#x} at {pos}"
                );
            }
        }
    }

    #[test]
    fn long_values_are_checked_past_the_first_sixteen_bytes() {
        let long = "a".repeat(40);
        assert_eq!(hostile(&long), None);
        assert_eq!(
            hostile(&format!("{long}\u{1b}")),
            Some((0x1b, 41, "text.control-character"))
        );
        assert_eq!(
            hostile(&format!("{}\0{}", "b".repeat(20), "c".repeat(20))),
            Some((0, 21, "text.control-character"))
        );
        assert_eq!(
            hostile(&format!("{long}é\u{ad}")),
            Some((0xad, 42, "text.invisible-character"))
        );
    }

    #[test]
    fn invisible_and_bidi_characters_are_found_after_non_ascii_text() {
        assert_eq!(
            hostile("E01001\u{200b}"),
            Some((0x200b, 7, "text.invisible-character"))
        );
        assert_eq!(
            hostile("Müller\u{202e}kcatta"),
            Some((0x202e, 7, "text.invisible-character"))
        );
        assert_eq!(
            hostile("\u{feff}Paul"),
            Some((0xfeff, 1, "text.invisible-character"))
        );
        for ch in [
            '\u{200c}',
            '\u{200d}',
            '\u{2060}',
            '\u{2066}',
            '\u{2069}',
            '\u{e0041}',
        ] {
            assert!(hostile(&format!("ab{ch}")).is_some(), "{ch:?}");
        }
    }

    #[test]
    fn the_description_names_the_character_and_where_it_is() {
        let h = first_hostile("Paul R\u{202e}ichter", true).unwrap();
        assert_eq!(h.describe(), "U+202E RIGHT-TO-LEFT OVERRIDE at character 7");
        assert_eq!(
            first_hostile("a\0", true).unwrap().describe(),
            "U+0000 NULL at character 2"
        );
    }

    #[test]
    fn escaping_shows_what_the_screen_hides() {
        assert_eq!(escape("E01001"), "\"E01001\"");
        assert_eq!(escape("E01001\u{200b}"), "\"E01001\\u{200B}\"");
        assert_eq!(escape("Ｅ0"), "\"\\u{FF25}0\"");
        assert_eq!(escape("a\"b\\"), "\"a\\\"b\\\\\"");
    }

    #[test]
    fn hidden_characters_are_made_visible_and_the_rest_left_alone() {
        assert_eq!(visible("Müller"), "Müller");
        assert_eq!(visible("Paul\u{202e}X\0"), "Paul\\u{202E}X\\u{0}");
    }

    #[test]
    fn look_alike_ids_fold_to_one() {
        let s = foldhash::quality::RandomState::default();
        let base = id_hash(&s, "E01001");
        for id in ["e01001", "Ｅ０１００１", "ｅ01001", "E01001"] {
            assert_eq!(fold_id(id), "e01001", "{id}");
            assert_eq!(id_hash(&s, id), base, "{id}");
        }
        assert_ne!(id_hash(&s, "E01002"), base);
        // An id with an invisible character is refused on its own; it is not silently equal.
        assert_ne!(id_hash(&s, "E01001\u{200b}"), base);
        let long = "A".repeat(200);
        assert_eq!(id_hash(&s, &long), id_hash(&s, &long.to_lowercase()));
    }

    #[test]
    fn the_ascii_id_path_hashes_as_the_folded_text_does() {
        let s = foldhash::quality::RandomState::default();
        for id in ["E01001", "abc", "MiXeD-07"] {
            assert_eq!(id_hash(&s, id), s.hash_one(fold_id(id).as_bytes()));
        }
    }

    #[test]
    fn recipients_compare_without_spaces_hyphens_and_case() {
        let norm = |s: &str| {
            let mut v = Vec::new();
            recipient_into(s, &mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(
            norm("GB86 BARC 1510 2255 2295 65"),
            "GB86BARC15102255229565"
        );
        assert_eq!(norm("gb86-barc-15102255229565"), "GB86BARC15102255229565");
        assert_eq!(
            norm("ＧＢ８６ BARC‐15102255229565"),
            "GB86BARC15102255229565"
        );
        assert_eq!(norm("4111 1111 1111 1111"), "4111111111111111");
    }
}

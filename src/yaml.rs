//! YAML input with positions: strict deserialisation whose errors carry the file's line and
//! column (YAML tags are refused: serde_yaml would read them as plain values), and a small locator that finds the line of a key path for errors found *after*
//! deserialisation (e.g. "unknown payload field" in the flow template).
//!
//! `yaml_serde` reports positions for syntax errors, unknown keys, wrong types and missing
//! keys, but keeps no spans on values. The locator walks the block-style layout that manifests
//! and schema files use (indentation, `key:` and `- ` entries); for flow-style collections it
//! falls back to the nearest enclosing key it can find, which is still the right neighbourhood.

use crate::diagnostic::Diagnostic;
use serde::de::DeserializeOwned;

/// Deserialises `text` strictly; on failure one diagnostic with the position yaml_serde gives.
/// A key given twice in one mapping is an error (typed maps would silently keep the last one).
pub fn from_str<T: DeserializeOwned>(file: &str, text: &str, rule: &str) -> Result<T, Diagnostic> {
    let to_diag = |e: serde_yaml::Error| {
        let mut pos = e.location().map(|l| (l.line() as u64, l.column() as u64));
        // yaml_serde points a duplicate key at the start of its mapping; point at the duplicate.
        if let (Some((line, col)), Some(dup)) = (pos, duplicate_key(&e.to_string())) {
            pos = second_key(text, line as usize, col as usize, &dup).or(pos);
        }
        let mut message = e.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // libyaml gives this one a byte position and no line (so 1:1): find the character.
        if message.starts_with("control characters are not allowed")
            && let Some((line, col, ch)) = first_forbidden(text)
        {
            pos = Some((line, col));
            message = format!("{} is not allowed in YAML", crate::validate::text::name(ch));
        }
        let hint = hint_for(&message);
        let mut d = Diagnostic::new(file, rule, message).at_opt(pos);
        if let Some(h) = hint {
            d = d.hint(h);
        }
        d
    };
    serde_yaml::from_str::<serde_yaml::Value>(text).map_err(to_diag)?;
    if let Some((line, column)) = tags(text).into_iter().next() {
        let prefix = rule.split('.').next().unwrap_or("yaml");
        let tag: String = text
            .lines()
            .nth(line as usize - 1)
            .unwrap_or("")
            .chars()
            .skip(column as usize - 1)
            .take_while(|c| !c.is_whitespace())
            .collect();
        return Err(Diagnostic::new(
            file,
            format!("{prefix}.yaml-tag"),
            format!(
                "`{}` is a YAML tag; payrun reads plain values only",
                crate::mask::shorten(&tag.chars().take(40).collect::<String>())
            ),
        )
        .at(line, column)
        .hint("remove the tag; a value that starts with `!` must be quoted, e.g. \"!value\""));
    }
    serde_yaml::from_str(text).map_err(to_diag)
}

/// The 1-based (line, column) of every tag (`!foo`, `!!str`, `!<…>`) in `text`, as the YAML
/// scanner serde_yaml uses finds them: a tag inside a quoted or block scalar or a comment is
/// text, not a tag. serde_yaml reads `!!python/object/apply:…` and friends as plain values, so
/// a manifest that means something else by them is refused rather than misread. Scanning stops
/// at a syntax error (reported by the parser).
pub fn tags(text: &str) -> Vec<(u64, u64)> {
    use libyaml_rs as sys;
    use std::mem::MaybeUninit;
    let mut found = Vec::new();
    // The parser points at itself (its read handler's data), so it stays in one place: boxed.
    let mut parser: Box<MaybeUninit<sys::yaml_parser_t>> = Box::new(MaybeUninit::uninit());
    let p = parser.as_mut_ptr();
    // SAFETY: the calls follow libyaml's protocol as serde_yaml does: initialise, set the input
    // (which `text` outlives), scan tokens, delete each token and finally the parser. A token
    // is read only after a successful scan filled it.
    unsafe {
        if sys::yaml_parser_initialize(p).fail {
            return found;
        }
        sys::yaml_parser_set_encoding(p, sys::YAML_UTF8_ENCODING);
        sys::yaml_parser_set_input_string(p, text.as_ptr(), text.len() as u64);
        loop {
            let mut token = MaybeUninit::<sys::yaml_token_t>::uninit();
            if sys::yaml_parser_scan(p, token.as_mut_ptr()).fail {
                break;
            }
            let t = token.as_mut_ptr();
            let kind = (*t).type_;
            if kind == sys::YAML_TAG_TOKEN {
                let m = (*t).start_mark;
                found.push((m.line + 1, m.column + 1));
            }
            sys::yaml_token_delete(t);
            if kind == sys::YAML_STREAM_END_TOKEN || kind == sys::YAML_NO_TOKEN {
                break;
            }
        }
        sys::yaml_parser_delete(p);
    }
    found
}

/// The first character YAML does not allow in a document (YAML 1.1 printable set, as libyaml
/// checks it), with its 1-based line and column (in characters).
fn first_forbidden(text: &str) -> Option<(u64, u64, char)> {
    let (mut line, mut col) = (1u64, 1u64);
    for ch in text.chars() {
        let allowed = matches!(ch,
            '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{A0}'..='\u{D7FF}'
            | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
        if !allowed {
            return Some((line, col, ch));
        }
        if ch == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    None
}

/// The key of a "duplicate entry with key \"k\"" message.
fn duplicate_key(message: &str) -> Option<String> {
    let rest = &message[message.find("duplicate entry with key \"")? + 26..];
    Some(rest[..rest.find('"')?].to_string())
}

/// The second `key:` at indentation `col` in the block that starts on `line` (1-based).
fn second_key(text: &str, line: usize, col: usize, key: &str) -> Option<(u64, u64)> {
    let mut seen = 0;
    for (i, l) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        let Some(ind) = indent_of(l) else { continue };
        if ind + 1 < col {
            break;
        }
        if ind + 1 == col && key_at(l, ind, key) {
            seen += 1;
            if seen == 2 {
                return Some((i as u64 + 1, col as u64));
            }
        }
    }
    None
}

fn hint_for(message: &str) -> Option<String> {
    if message.contains("duplicate entry") {
        Some("a key may appear once per block; merge the two entries".into())
    } else if message.contains("unknown field") || message.contains("unknown variant") {
        Some(
            "check the spelling against the examples in batches/ and the reference in README.md"
                .into(),
        )
    } else if message.contains("missing field") {
        Some("add the key; see the reference in README.md".into())
    } else if message.contains("is not allowed in YAML") {
        Some("remove the character: a manifest is plain text (a NUL byte often means the file was saved as UTF-16 or is not a manifest)".into())
    } else if message.contains("invalid type") || message.contains("invalid value") {
        Some("quote values that must stay text, e.g. ids with leading zeros: \"007\"".into())
    } else {
        None
    }
}

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

pub fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// Finds the 1-based (line, column) of the node at `path`, or of its nearest ancestor found.
pub fn locate(text: &str, path: &[Seg]) -> Option<(u64, u64)> {
    let lines: Vec<&str> = text.lines().collect();
    // A scope is a range of lines [start, end) whose entries sit at indentation > `parent`.
    let mut start = 0usize;
    let mut end = lines.len();
    let mut parent: isize = -1;
    let mut found: Option<(u64, u64)> = None;
    // When the previous step landed on "- key: v", the mapping's first key sits after the dash.
    let mut inline_first: Option<(usize, usize)> = None;
    for seg in path {
        let mut hit: Option<(usize, usize)> = None; // (line index, column index)
        match seg {
            Seg::Key(k) => {
                if let Some((li, col)) = inline_first.take()
                    && key_at(lines[li], col, k)
                {
                    hit = Some((li, col));
                }
                if hit.is_none() {
                    let want = scope_indent(&lines, start, end, parent);
                    for (li, line) in lines.iter().enumerate().take(end).skip(start) {
                        let Some(ind) = indent_of(line) else { continue };
                        if Some(ind) == want && key_at(line, ind, k) {
                            hit = Some((li, ind));
                            break;
                        }
                    }
                }
                if let Some((li, col)) = hit {
                    parent = col as isize;
                    start = li + 1;
                    end = scope_end(&lines, start, col);
                    // A value on the same line ("key: value") is its own node; children follow.
                    found = Some((li as u64 + 1, col as u64 + 1));
                }
            }
            Seg::Index(n) => {
                let want = scope_indent(&lines, start, end, parent);
                let mut count = 0usize;
                for (li, line) in lines.iter().enumerate().take(end).skip(start) {
                    let Some(ind) = indent_of(line) else { continue };
                    if Some(ind) == want && line[ind..].starts_with('-') {
                        if count == *n {
                            hit = Some((li, ind));
                            break;
                        }
                        count += 1;
                    }
                }
                if let Some((li, col)) = hit {
                    let after = &lines[li][col + 1..];
                    let content = col + 1 + (after.len() - after.trim_start().len());
                    parent = col as isize;
                    end = scope_end(&lines, li + 1, col);
                    start = li + 1;
                    if content < lines[li].len() {
                        inline_first = Some((li, content));
                        // Keys of this entry after the first line are indented like the first one.
                        parent = content as isize - 1;
                    }
                    found = Some((li as u64 + 1, content as u64 + 1));
                }
            }
        }
        if hit.is_none() {
            break;
        }
    }
    found
}

fn indent_of(line: &str) -> Option<usize> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        None
    } else {
        Some(line.len() - t.len())
    }
}

fn key_at(line: &str, col: usize, k: &str) -> bool {
    let rest = &line[col..];
    let rest = rest.strip_prefix("- ").map(str::trim_start).unwrap_or(rest);
    for quoted in [format!("{k}:"), format!("\"{k}\":"), format!("'{k}':")] {
        if let Some(after) = rest.strip_prefix(&quoted) {
            return after.is_empty() || after.starts_with(' ') || after.starts_with('\t');
        }
    }
    false
}

/// The indentation of the first entry in the scope (YAML lets a child mapping use any depth).
fn scope_indent(lines: &[&str], start: usize, end: usize, parent: isize) -> Option<usize> {
    lines[start..end]
        .iter()
        .filter_map(|l| indent_of(l))
        .find(|&i| i as isize > parent || (parent >= 0 && i as isize == parent))
}

fn scope_end(lines: &[&str], start: usize, col: usize) -> usize {
    for (li, line) in lines.iter().enumerate().skip(start) {
        if let Some(ind) = indent_of(line)
            && (ind < col || (ind == col && !line[ind..].starts_with('-')))
        {
            return li;
        }
    }
    lines.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
batch: b1
items:
  source: a.csv
flow:
  - op: pay.toCard
    payload:
      to:
        amount: ${item.amount}
    success:
      - op: task.statusGet
        payload: {invoiceId: x}
  - id: second
    op: fx.rateGet
";

    fn at(path: &[Seg]) -> Option<(u64, u64)> {
        locate(DOC, path)
    }

    #[test]
    fn finds_top_level_and_nested_keys() {
        assert_eq!(at(&[key("batch")]), Some((1, 1)));
        assert_eq!(at(&[key("items"), key("source")]), Some((3, 3)));
    }

    #[test]
    fn finds_keys_inside_sequence_entries() {
        assert_eq!(at(&[key("flow"), Seg::Index(0), key("op")]), Some((5, 5)));
        assert_eq!(
            at(&[
                key("flow"),
                Seg::Index(0),
                key("payload"),
                key("to"),
                key("amount")
            ]),
            Some((8, 9))
        );
        assert_eq!(at(&[key("flow"), Seg::Index(1), key("op")]), Some((13, 5)));
        assert_eq!(
            at(&[
                key("flow"),
                Seg::Index(0),
                key("success"),
                Seg::Index(0),
                key("op")
            ]),
            Some((10, 9))
        );
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        assert_eq!(
            at(&[
                key("flow"),
                Seg::Index(0),
                key("success"),
                Seg::Index(0),
                key("payload"),
                key("invoiceId")
            ]),
            Some((11, 9))
        );
        assert_eq!(at(&[key("nope")]), None);
    }

    #[test]
    fn yaml_tags_are_refused_with_their_position_wherever_they_are() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            a: String,
            #[serde(default)]
            b: Vec<String>,
        }
        for (text, line, column) in [
            ("a: !!python/object/apply:os.system [\"ls\"]\n", 1, 4),
            ("a: !foo x\n", 1, 4),
            ("a: !!str x\n", 1, 4),
            ("a: x\nb:\n  - y\n  - !<tag:yaml.org,2002:str> z\n", 4, 5),
            ("a: x\nb: [y, !t z]\n", 2, 8),
        ] {
            let e = from_str::<S>("m.yaml", text, "manifest.syntax").unwrap_err();
            assert_eq!(e.rule, "manifest.yaml-tag", "{text}");
            assert_eq!((e.line, e.column), (Some(line), Some(column)), "{text}");
            assert!(e.hint.unwrap().contains("quoted"));
        }
        let e = from_str::<S>(
            "m.yaml",
            "a: !!python/object/apply:os.system [\"ls\"]\n",
            "schema.syntax",
        )
        .unwrap_err();
        assert!(
            e.message
                .starts_with("`!!python/object/apply:os.system` is a YAML tag"),
            "{}",
            e.message
        );
    }

    #[test]
    fn an_exclamation_mark_in_a_quoted_block_or_plain_value_or_a_comment_is_no_tag() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            a: String,
            b: String,
            c: String,
        }
        let text = "a: '!not a tag'\nb: |\n  !still text\nc: hello !world # !comment\n";
        assert_eq!(tags(text), vec![]);
        let s = from_str::<S>("m.yaml", text, "manifest.syntax").unwrap();
        assert_eq!(s.a, "!not a tag");
        assert_eq!(s.c, "hello !world");
    }

    #[test]
    fn a_huge_value_in_a_serde_message_is_cut() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            a: u32,
        }
        let text = format!("a: \"{}\"\n", "y".repeat(1 << 20));
        let e = from_str::<S>("m.yaml", &text, "manifest.syntax").unwrap_err();
        assert!(e.message.len() < 200, "{}", e.message);
        assert!(
            e.message.contains("invalid type: string \"yyyy"),
            "{}",
            e.message
        );
    }

    #[test]
    fn errors_from_serde_carry_line_and_column() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            a: u32,
        }
        let e = from_str::<S>("m.yaml", "a: 1\nb: 2\n", "manifest.syntax").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.starts_with("unknown field `b`"), "{}", e.message);
        let e = from_str::<S>("m.yaml", "b:\n  c: 1\n  c: 2\n", "manifest.syntax").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("duplicate entry"), "{}", e.message);
    }

    #[test]
    fn a_nul_byte_is_reported_on_its_own_line_not_at_1_1() {
        let e = from_str::<serde_yaml::Value>("m.yaml", "a: 1\nb: x\0y\n", "manifest.syntax")
            .unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(5)));
        assert!(e.message.contains("U+0000 NULL"), "{}", e.message);
        let e = from_str::<serde_yaml::Value>("m.yaml", "a: é\nbb: \u{1b}[2J\n", "manifest.syntax")
            .unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(5)));
        assert!(e.message.contains("U+001B ESCAPE"), "{}", e.message);
    }
}

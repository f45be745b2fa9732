//! Reading labelled examples from TSV / CSV / JSON / JSONL files, with errors that name the file
//! and line (missing column, unknown label, empty text, invalid UTF-8) instead of panicking.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Example;

/// An error in a data file, located as precisely as the format allows.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DataError {
    pub path: PathBuf,
    /// 1-based line number, when known.
    pub line: Option<u64>,
    pub message: String,
}

impl DataError {
    pub(crate) fn new(path: &Path, line: Option<u64>, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// Where a field comes from in a delimited row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// By header name (the file must have a header row).
    Name(String),
    /// By 0-based position.
    Index(usize),
    /// The last field of each row (SNLI's LM-BFF files: rows carry 1 to 5 annotator labels
    /// before `gold_label`, more fields than the header names).
    Last,
}

impl Column {
    /// A column by header name.
    pub fn name(n: &str) -> Self {
        Self::Name(n.to_string())
    }
}

/// How labels in a file map to class indices.
#[derive(Debug, Clone)]
pub struct LabelMap {
    map: HashMap<String, usize>,
}

impl LabelMap {
    /// Labels written as the given strings, class `i` being any string in `names[i]`.
    pub fn new(names: &[&[&str]]) -> Self {
        let map = names
            .iter()
            .enumerate()
            .flat_map(|(class, aliases)| aliases.iter().map(move |a| (a.to_string(), class)))
            .collect();
        Self { map }
    }

    /// Labels written as integers `first, first + 1, ...` for `n` classes.
    pub fn numeric(n: usize, first: usize) -> Self {
        let map = (0..n).map(|c| ((c + first).to_string(), c)).collect();
        Self { map }
    }

    /// The class of a label string (surrounding whitespace ignored).
    pub fn class_of(&self, label: &str) -> Option<usize> {
        self.map.get(label.trim()).copied()
    }

    fn known(&self) -> String {
        let mut v: Vec<(&String, &usize)> = self.map.iter().collect();
        v.sort_by_key(|(k, c)| (**c, (*k).clone()));
        v.iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The layout of a delimited file.
#[derive(Debug, Clone)]
pub struct Delimited {
    pub delimiter: u8,
    /// Whether `"` quotes fields (CSV) or is an ordinary character (GLUE TSVs, QUOTE_NONE).
    pub quoting: bool,
    pub has_header: bool,
    /// Columns whose values, joined by a space, form the first text (AG News: title + description).
    pub text_a: Vec<Column>,
    pub text_b: Option<Column>,
    pub label: Column,
    pub labels: LabelMap,
}

/// Reads a whole file as bytes, with a located error.
fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| DataError::new(path, None, format!("cannot read: {e}")))
}

/// Strips a UTF-8 byte-order mark (MRPC's files start with one).
fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

fn checked_text(path: &Path, line: u64, what: &str, s: &str) -> Result<String, DataError> {
    if s.trim().is_empty() {
        return Err(DataError::new(path, Some(line), format!("empty {what}")));
    }
    Ok(s.trim().to_string())
}

/// Reads examples from a delimited file in the given layout.
pub fn read_delimited(path: &Path, layout: &Delimited) -> Result<Vec<Example>, DataError> {
    parse_delimited(path, &read_bytes(path)?, layout)
}

/// Parses delimited `bytes`; `path` names them in errors (it may be a member of an archive).
pub fn parse_delimited(
    path: &Path,
    bytes: &[u8],
    layout: &Delimited,
) -> Result<Vec<Example>, DataError> {
    let bytes = strip_bom(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DataError::new(
            path,
            None,
            "the file is empty: it needs a header line and at least one example",
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(layout.delimiter)
        .quoting(layout.quoting)
        .has_headers(layout.has_header)
        .flexible(true)
        .from_reader(bytes);
    let header = if layout.has_header {
        read_header(path, &mut reader)?
    } else {
        Vec::new()
    };
    let columns = Columns::resolve(path, &header, layout)?;
    let mut out = Vec::new();
    for record in reader.byte_records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line());
            DataError::new(path, line, format!("malformed row: {e}"))
        })?;
        if record.len() == 1 && record.get(0).is_some_and(|f| f.is_empty()) {
            continue; // blank line
        }
        out.push(columns.example(path, &record, layout)?);
    }
    Ok(out)
}

/// The header's field names, trimmed.
fn read_header(path: &Path, reader: &mut csv::Reader<&[u8]>) -> Result<Vec<String>, DataError> {
    let h = reader
        .byte_headers()
        .map_err(|e| DataError::new(path, Some(1), format!("unreadable header: {e}")))?;
    h.iter()
        .map(|f| std::str::from_utf8(f).map(|f| f.trim().to_string()))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            DataError::new(
                path,
                Some(1),
                "the header is not UTF-8 text: is this a CSV/TSV file (saved as UTF-8)?",
            )
        })
}

/// A layout's columns as field indices of the file at hand.
struct Columns {
    text_a: Vec<usize>,
    text_b: Option<usize>,
    /// `None`: the last field of each row.
    label: Option<usize>,
    /// Fields a row needs at least.
    needed: usize,
}

impl Columns {
    /// Resolves `layout`'s columns by index or by their names in `header`.
    fn resolve(path: &Path, header: &[String], layout: &Delimited) -> Result<Self, DataError> {
        // `None` stands for the last field of the row.
        let resolve = |c: &Column| -> Result<Option<usize>, DataError> {
            match c {
                Column::Index(i) => Ok(Some(*i)),
                Column::Last => Ok(None),
                Column::Name(n) => header.iter().position(|h| h == n).map(Some).ok_or_else(|| {
                    DataError::new(
                        path,
                        Some(1),
                        format!("missing column `{n}` (header has: {})", header.join(", ")),
                    )
                }),
            }
        };
        let fixed = |c: &Column| -> Result<usize, DataError> {
            resolve(c)?
                .ok_or_else(|| DataError::new(path, None, "only the label may be the last column"))
        };
        let text_a: Vec<usize> = layout.text_a.iter().map(fixed).collect::<Result<_, _>>()?;
        let text_b = layout.text_b.as_ref().map(fixed).transpose()?;
        let label = resolve(&layout.label)?;
        let needed = text_a
            .iter()
            .chain(&text_b)
            .chain(&label)
            .max()
            .copied()
            .unwrap_or(0)
            + 1;
        Ok(Self {
            text_a,
            text_b,
            label,
            needed,
        })
    }

    /// One row as an example, its errors naming the file and line.
    fn example(
        &self,
        path: &Path,
        record: &csv::ByteRecord,
        layout: &Delimited,
    ) -> Result<Example, DataError> {
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() < self.needed {
            return Err(DataError::new(
                path,
                Some(line),
                format!(
                    "row has {} fields, the layout needs at least {}",
                    record.len(),
                    self.needed
                ),
            ));
        }
        let field = |i: usize| -> Result<&str, DataError> {
            std::str::from_utf8(&record[i]).map_err(|e| {
                DataError::new(
                    path,
                    Some(line),
                    format!("invalid UTF-8 in field {}: {e}", i + 1),
                )
            })
        };
        let mut parts = Vec::with_capacity(self.text_a.len());
        for &i in &self.text_a {
            let f = field(i)?.trim();
            if !f.is_empty() {
                parts.push(f);
            }
        }
        let a = checked_text(path, line, "text", &parts.join(" "))?;
        let b = match self.text_b {
            Some(i) => Some(checked_text(path, line, "second text", field(i)?)?),
            None => None,
        };
        let raw = field(self.label.unwrap_or(record.len() - 1))?;
        let class = layout.labels.class_of(raw).ok_or_else(|| {
            DataError::new(
                path,
                Some(line),
                format!(
                    "unknown label {:?} (expected one of: {})",
                    raw.trim(),
                    layout.labels.known()
                ),
            )
        })?;
        Ok(Example {
            text_a: a,
            text_b: b,
            label: class,
        })
    }
}

/// Keys of the fields in JSON objects.
#[derive(Debug, Clone)]
pub struct JsonFields {
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: String,
    pub labels: LabelMap,
}

fn example_from_json(
    path: &Path,
    line: Option<u64>,
    value: &serde_json::Value,
    fields: &JsonFields,
) -> Result<Example, DataError> {
    let err = |m: String| DataError::new(path, line, m);
    let text = |key: &str| -> Result<String, DataError> {
        let v = value
            .get(key)
            .ok_or_else(|| err(format!("missing field `{key}`")))?;
        let s = v
            .as_str()
            .ok_or_else(|| err(format!("field `{key}` is not a string")))?;
        if s.trim().is_empty() {
            return Err(err(format!("empty text in field `{key}`")));
        }
        Ok(s.trim().to_string())
    };
    let label_value = value
        .get(&fields.label)
        .ok_or_else(|| err(format!("missing field `{}`", fields.label)))?;
    let label_text = match label_value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let label = fields.labels.class_of(&label_text).ok_or_else(|| {
        err(format!(
            "unknown label {label_text:?} (expected one of: {})",
            fields.labels.known()
        ))
    })?;
    Ok(Example {
        text_a: text(&fields.text_a)?,
        text_b: fields.text_b.as_deref().map(text).transpose()?,
        label,
    })
}

/// `bytes` as UTF-8 (BOM stripped), or an error at the line of the first invalid byte.
pub fn utf8(path: &Path, bytes: &[u8]) -> Result<String, DataError> {
    String::from_utf8(strip_bom(bytes).to_vec()).map_err(|e| {
        let valid = &bytes[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        DataError::new(path, Some(line), "invalid UTF-8")
    })
}

/// Reads JSON Lines: one object per line.
pub fn read_jsonl(path: &Path, fields: &JsonFields) -> Result<Vec<Example>, DataError> {
    let text = utf8(path, &read_bytes(path)?)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = Some(i as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| DataError::new(path, line_no, format!("invalid JSON: {e}")))?;
        out.push(example_from_json(path, line_no, &value, fields)?);
    }
    Ok(out)
}

/// Reads a JSON object of objects (`{"0": {...}, "1": {...}}`, SNLI's train pool) or an array
/// of objects, in key order for objects keyed by integers.
pub fn read_json_records(path: &Path, fields: &JsonFields) -> Result<Vec<Example>, DataError> {
    let text = utf8(path, &read_bytes(path)?)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| DataError::new(path, Some(e.line() as u64), format!("invalid JSON: {e}")))?;
    let records: Vec<&serde_json::Value> = match &value {
        serde_json::Value::Array(items) => items.iter().collect(),
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            entries.sort_by_key(|(k, _)| (k.parse::<u64>().unwrap_or(u64::MAX), (*k).clone()));
            entries.into_iter().map(|(_, v)| v).collect()
        }
        _ => {
            return Err(DataError::new(
                path,
                None,
                "expected a JSON array or object of records",
            ))
        }
    };
    records
        .into_iter()
        .map(|r| example_from_json(path, None, r, fields))
        .collect()
}

/// Reads `<label> <text>` lines (the TextFooler Yelp sample).
pub fn read_label_space_text(path: &Path, labels: &LabelMap) -> Result<Vec<Example>, DataError> {
    let text = utf8(path, &read_bytes(path)?)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = Some(i as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let (label, rest) = line
            .split_once(' ')
            .ok_or_else(|| DataError::new(path, line_no, "expected `<label> <text>`"))?;
        let class = labels.class_of(label).ok_or_else(|| {
            DataError::new(
                path,
                line_no,
                format!(
                    "unknown label {label:?} (expected one of: {})",
                    labels.known()
                ),
            )
        })?;
        out.push(Example {
            text_a: checked_text(path, i as u64 + 1, "text", rest)?,
            text_b: None,
            label: class,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn sentence_label() -> Delimited {
        Delimited {
            delimiter: b'\t',
            quoting: false,
            has_header: true,
            text_a: vec![Column::name("sentence")],
            text_b: None,
            label: Column::name("label"),
            labels: LabelMap::numeric(2, 0),
        }
    }

    fn err_of(path: &Path, layout: &Delimited) -> String {
        read_delimited(path, layout).unwrap_err().to_string()
    }

    #[test]
    fn reads_glue_tsv_with_bom_quotes_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(
            &dir,
            "ok.tsv",
            "\u{feff}sentence\tlabel\n\"quoted\" text \"inside\t1\n\nplain\t0\r\n".as_bytes(),
        );
        let got = read_delimited(&p, &sentence_label()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].text_a, "\"quoted\" text \"inside");
        assert_eq!((got[0].label, got[1].label), (1, 0));
    }

    #[test]
    fn missing_column_names_the_file_and_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(&dir, "cols.tsv", b"text\tlabel\nhello\t1\n");
        let e = err_of(&p, &sentence_label());
        assert!(
            e.contains("cols.tsv:1: missing column `sentence` (header has: text, label)"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_or_binary_file_says_so_without_echoing_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for bytes in [&b""[..], b"\n  \n", b"\xEF\xBB\xBF"] {
            let p = file(&dir, "empty.tsv", bytes);
            let e = err_of(&p, &sentence_label());
            assert!(e.contains("empty.tsv: the file is empty"), "{e}");
        }
        let binary: Vec<u8> = (0..=255u8).cycle().skip(128).take(300).collect();
        let p = file(&dir, "photo.tsv", &binary);
        let e = err_of(&p, &sentence_label());
        assert!(
            e.contains("photo.tsv:1: the header is not UTF-8 text: is this a CSV/TSV file"),
            "{e}"
        );
        assert!(e.is_ascii(), "no raw bytes in the message: {e}");
    }

    #[test]
    fn unknown_label_names_file_line_and_the_known_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(&dir, "labels.tsv", b"sentence\tlabel\nfine\t1\nodd\t7\n");
        let e = err_of(&p, &sentence_label());
        assert!(
            e.contains("labels.tsv:3: unknown label \"7\" (expected one of: 0, 1)"),
            "{e}"
        );
    }

    #[test]
    fn empty_text_and_short_rows_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(&dir, "empty.tsv", b"sentence\tlabel\nfine\t1\n   \t0\n");
        assert!(err_of(&p, &sentence_label()).contains("empty.tsv:3: empty text"));
        let p = file(
            &dir,
            "short.tsv",
            b"sentence\tlabel\nfine\t1\nno label here\n",
        );
        let e = err_of(&p, &sentence_label());
        assert!(e.contains("short.tsv:3: row has 1 fields"), "{e}");
    }

    #[test]
    fn invalid_utf8_is_located_in_delimited_and_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(
            &dir,
            "bad.tsv",
            b"sentence\tlabel\nok\t0\nbad \xff byte\t1\n",
        );
        let e = err_of(&p, &sentence_label());
        assert!(e.contains("bad.tsv:3: invalid UTF-8"), "{e}");
        let fields = JsonFields {
            text_a: "input".into(),
            text_b: None,
            label: "output".into(),
            labels: LabelMap::new(&[&["negative"], &["positive"]]),
        };
        let p = file(
            &dir,
            "bad.jsonl",
            b"{\"input\": \"ok\", \"output\": \"positive\"}\n{\"input\": \"\xfe\"}\n",
        );
        let e = read_jsonl(&p, &fields).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:2: invalid UTF-8"), "{e}");
    }

    #[test]
    fn json_lines_and_records_with_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let fields = JsonFields {
            text_a: "text_a".into(),
            text_b: Some("text_b".into()),
            label: "label".into(),
            labels: LabelMap::new(&[
                &["entailment", "0"],
                &["neutral", "1"],
                &["contradiction", "2"],
            ]),
        };
        let p = file(
            &dir,
            "pool.json",
            br#"{"10": {"text_a": "b", "text_b": "c", "label": "neutral"}, "2": {"text_a": "a", "text_b": "b", "label": 2}}"#,
        );
        let got = read_json_records(&p, &fields).unwrap();
        assert_eq!((got[0].text_a.as_str(), got[0].label), ("a", 2)); // integer keys in order
        assert_eq!((got[1].text_b.as_deref(), got[1].label), (Some("c"), 1));
        let p = file(
            &dir,
            "l.jsonl",
            b"{\"text_a\": \"a\", \"label\": \"neutral\"}\n",
        );
        let e = read_jsonl(&p, &fields).unwrap_err().to_string();
        assert!(e.contains("l.jsonl:1: missing field `text_b`"), "{e}");
        let p = file(
            &dir,
            "m.jsonl",
            b"{\"text_a\": \"a\", \"text_b\": \"b\", \"label\": \"x\"}\nnot json\n",
        );
        let e = read_jsonl(&p, &fields).unwrap_err().to_string();
        assert!(e.contains("m.jsonl:1: unknown label \"x\""), "{e}");
    }

    #[test]
    fn label_may_be_the_last_field_of_ragged_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(
            &dir,
            "snli.tsv",
            b"s1\ts2\tlabel1\tgold_label\na\tb\tneutral\tneutral\nc\td\tx\ty\tz\tentailment\n",
        );
        let layout = Delimited {
            text_a: vec![Column::name("s1")],
            text_b: Some(Column::name("s2")),
            label: Column::Last,
            labels: LabelMap::new(&[&["entailment"], &["neutral"]]),
            ..sentence_label()
        };
        let got = read_delimited(&p, &layout).unwrap();
        assert_eq!((got[0].label, got[1].label), (1, 0));
    }
}

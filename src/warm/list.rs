//! Image lists for `ctrpull warm`: plain text, YAML or JSON, each entry checked with
//! the file and line it came from.
//!
//! - Text: one reference per line, an optional platform (`os/arch[/variant]`) as the
//!   second column; `#` starts a comment; blank lines are ignored.
//! - YAML or JSON: a list whose entries are references or `{image, platform}`
//!   objects, either at the top or under an `images` key.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Error;
use crate::pull::{Platform, WarmItem};
use crate::reference::Reference;

/// How a list is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One reference per line.
    Text,
    /// A YAML (or JSON, which YAML reads too) document.
    Structured,
}

impl Format {
    /// The format a file name says (`.yaml`, `.yml`, `.json`), else what the content
    /// looks like: a document that opens with `[`, `{`, `- ` or `images:` is
    /// structured, anything else text.
    pub fn detect(name: &str, text: &str) -> Format {
        let extension = Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if matches!(extension.as_deref(), Some("yaml" | "yml" | "json")) {
            return Format::Structured;
        }
        let first = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#') && line != &"---");
        match first {
            Some(line)
                if line.starts_with('[')
                    || line.starts_with('{')
                    || line.starts_with("- ")
                    || line == "-"
                    || line.starts_with("images:") =>
            {
                Format::Structured
            }
            _ => Format::Text,
        }
    }
}

/// Parses the list `text` read from `name` (a path, or `<stdin>`).
pub fn parse(name: &str, text: &str) -> Result<Vec<WarmItem>, Error> {
    match Format::detect(name, text) {
        Format::Text => parse_text(name, text),
        Format::Structured => parse_structured(name, text),
    }
}

/// Reads and parses the list at `path`; `-` reads standard input.
pub fn read(path: &Path) -> Result<Vec<WarmItem>, Error> {
    let (name, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|error| {
            Error::Read {
                name: "<stdin>".into(),
                error,
            }
        })?;
        ("<stdin>".to_string(), text)
    } else {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| Error::Read {
            name: name.clone(),
            error,
        })?;
        (name, text)
    };
    parse(&name, &text)
}

fn parse_text(name: &str, text: &str) -> Result<Vec<WarmItem>, Error> {
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let columns: Vec<&str> = line.split_whitespace().collect();
        let at = |reason: String| Error::List {
            name: name.to_string(),
            line: i + 1,
            reason,
        };
        if columns.len() > 2 {
            return Err(at(format!(
                "expected `REF [PLATFORM]`, found {} columns",
                columns.len()
            )));
        }
        items.push(item(columns[0], columns.get(1).copied()).map_err(at)?);
    }
    Ok(items)
}

fn parse_structured(name: &str, text: &str) -> Result<Vec<WarmItem>, Error> {
    let document: Entries = serde_saphyr::from_str(text).map_err(|e| Error::Format {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    document
        .0
        .into_iter()
        .map(|entry| {
            item(&entry.value.image, entry.value.platform.as_deref()).map_err(|reason| {
                Error::List {
                    name: name.to_string(),
                    line: entry.referenced.line() as usize,
                    reason,
                }
            })
        })
        .collect()
}

/// One entry, checked: a reference and an optional platform.
fn item(reference: &str, platform: Option<&str>) -> Result<WarmItem, String> {
    let parsed =
        Reference::parse(reference).map_err(|e| format!("invalid reference {reference:?}: {e}"))?;
    let platform = platform
        .map(|p| p.parse::<Platform>().map_err(|e| e.to_string()))
        .transpose()?;
    Ok(WarmItem {
        reference: parsed,
        platform,
    })
}

/// The entries of a structured list, each with where it starts.
struct Entries(Vec<Spanned<Entry>>);

/// A reference alone, or `{image, platform}`.
struct Entry {
    image: String,
    platform: Option<String>,
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of images, or a map with an `images` list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Entries, A::Error> {
                SeqVisitor(PhantomData).visit_seq(seq).map(Entries)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut images = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "images" => images = Some(map.next_value::<Vec<Spanned<Entry>>>()?),
                        other => return Err(de::Error::unknown_field(other, &["images"])),
                    }
                }
                images
                    .map(Entries)
                    .ok_or_else(|| de::Error::missing_field("images"))
            }
        }
        deserializer.deserialize_any(EntriesVisitor)
    }
}

struct SeqVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(value) = seq.next_element()? {
            out.push(value);
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an image reference, or a map with `image` and `platform`")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Entry, E> {
                Ok(Entry {
                    image: value.to_string(),
                    platform: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
                let (mut image, mut platform) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "image" => image = Some(map.next_value::<String>()?),
                        "platform" => platform = Some(map.next_value::<String>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["image", "platform"]))
                        }
                    }
                }
                let image = image.ok_or_else(|| de::Error::missing_field("image"))?;
                Ok(Entry { image, platform })
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn refs(items: &[WarmItem]) -> Vec<(String, Option<String>)> {
        items
            .iter()
            .map(|i| {
                (
                    i.reference.to_string(),
                    i.platform.as_ref().map(|p| p.to_string()),
                )
            })
            .collect()
    }

    fn busybox() -> (String, Option<String>) {
        ("docker.io/library/busybox:latest".into(), None)
    }

    fn app_arm() -> (String, Option<String>) {
        (
            "registry.example:5000/team/app:1.2".into(),
            Some("linux/arm64/v8".into()),
        )
    }

    #[rstest]
    #[case::text(
        "list.txt",
        "# images for the nodes\n\nbusybox\nregistry.example:5000/team/app:1.2  linux/arm64   # arm\n"
    )]
    #[case::text_crlf(
        "list",
        "busybox\r\nregistry.example:5000/team/app:1.2\tlinux/arm64\r\n"
    )]
    #[case::yaml(
        "list.yaml",
        "# a comment\n- busybox\n- image: registry.example:5000/team/app:1.2\n  platform: linux/arm64\n"
    )]
    #[case::yaml_by_content(
        "images",
        "images:\n  - busybox\n  - {image: registry.example:5000/team/app:1.2, platform: linux/arm64}\n"
    )]
    #[case::json(
        "list.json",
        "[\"busybox\", {\"image\": \"registry.example:5000/team/app:1.2\", \"platform\": \"linux/arm64\"}]"
    )]
    #[case::json_object_by_content(
        "-",
        "{\n  \"images\": [\n    \"busybox\",\n    {\"image\": \"registry.example:5000/team/app:1.2\", \"platform\": \"linux/arm64\"}\n  ]\n}\n"
    )]
    fn formats(#[case] name: &str, #[case] text: &str) {
        let items = parse(name, text).unwrap();
        assert_eq!(refs(&items), vec![busybox(), app_arm()]);
    }

    #[rstest]
    #[case::text_reference(
        "list.txt",
        "busybox\n\nNot A Ref\n",
        "list.txt:3: expected `REF [PLATFORM]`, found 3 columns"
    )]
    #[case::text_bad_reference(
        "list.txt",
        "busybox\napp/UPPER:1\n",
        "list.txt:2: invalid reference \"app/UPPER:1\""
    )]
    #[case::text_bad_platform(
        "list.txt",
        "# c\nbusybox linux\n",
        "list.txt:2: invalid platform \"linux\""
    )]
    #[case::yaml_bad_reference(
        "l.yaml",
        "- busybox\n- image: \"bad ref\"\n",
        "l.yaml:2: invalid reference \"bad ref\""
    )]
    #[case::yaml_bad_platform(
        "l.yaml",
        "images:\n  - busybox\n  - image: busybox\n    platform: x\n",
        "l.yaml:3: invalid platform \"x\""
    )]
    #[case::yaml_unknown_key("l.yaml", "- imag: busybox\n", "l.yaml: ")]
    #[case::yaml_missing_image("l.yaml", "- platform: linux/amd64\n", "image")]
    #[case::json_syntax("l.json", "[\"busybox\",\n  \"a\"\n", "l.json: ")]
    #[case::not_a_list("l.yaml", "42\n", "a list of images")]
    fn errors_name_the_file_and_line(#[case] name: &str, #[case] text: &str, #[case] want: &str) {
        let err = parse(name, text).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }

    #[test]
    fn structured_syntax_errors_say_where() {
        let err = parse("l.yaml", "- busybox\n- image: [unclosed\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("l.yaml: "), "{err}");
        assert!(err.contains("line 2") || err.contains(":2:"), "{err}");
    }

    #[rstest]
    #[case::ext_yaml("a.YML", "busybox", Format::Structured)]
    #[case::ext_json("a.json", "busybox", Format::Structured)]
    #[case::text("a.txt", "busybox\n", Format::Text)]
    #[case::dash_list("-", "# list\n- busybox\n", Format::Structured)]
    #[case::bracket("-", "\n[\"busybox\"]", Format::Structured)]
    #[case::empty("-", "", Format::Text)]
    fn detection(#[case] name: &str, #[case] text: &str, #[case] format: Format) {
        assert_eq!(Format::detect(name, text), format);
    }

    #[test]
    fn an_empty_list_is_empty() {
        assert!(parse("l.txt", "# nothing\n\n").unwrap().is_empty());
        assert!(parse("l.yaml", "images: []\n").unwrap().is_empty());
    }
}

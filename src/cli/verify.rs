//! `ctrpull verify`: would the kubelet see these images? Asks CRI `ImageStatus` for each.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::cri::verify::{verify_at, ImageCheck, Verification};
use crate::pull::DEFAULT_ADDRESS;
use crate::reference::Reference;

/// Options of `ctrpull verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// containerd socket; its CRI ImageService is asked (CRI reads the namespace its
    /// plugin is configured for, k8s.io, whatever --namespace a pull used).
    #[arg(long, env = "CONTAINERD_ADDRESS", default_value = DEFAULT_ADDRESS)]
    pub address: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors; the exit code tells.
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,
    /// Images to look for, named as in a pod spec: busybox, registry.example:5000/app:1.2,
    /// app@sha256:…
    #[arg(required = true, value_name = "REF")]
    pub refs: Vec<String>,
}

/// Exit 0 when CRI has every image, 1 when one is missing or CRI cannot be asked, 2 for
/// a malformed reference.
pub(super) async fn run(args: VerifyArgs) -> u8 {
    let references = match parse_all(&args.refs) {
        Ok(references) => references,
        Err(message) => {
            eprintln!("ctrpull: {message}");
            return EXIT_USAGE;
        }
    };
    let verification = match verify_at(&args.address, &references).await {
        Ok(verification) => verification,
        Err(e) => {
            eprintln!("ctrpull: verify: {e}");
            return EXIT_FAILED;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&verification) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("ctrpull: cannot write the result as JSON: {e}");
                return EXIT_FAILED;
            }
        }
    } else if !args.quiet {
        print!("{}", text(&verification));
    }
    if verification.all_present {
        return EXIT_OK;
    }
    let missing: Vec<String> = verification.missing().map(|r| r.to_string()).collect();
    eprintln!(
        "ctrpull: {} of {} image(s) missing from CRI at {} (the kubelet would pull them): {}",
        missing.len(),
        verification.images.len(),
        verification.address.display(),
        missing.join(", ")
    );
    EXIT_FAILED
}

/// Every reference parsed, or a message naming each one that is not (all of them,
/// so one run shows every typo in a list).
fn parse_all(texts: &[String]) -> Result<Vec<Reference>, String> {
    let mut references = Vec::with_capacity(texts.len());
    let mut errors = Vec::new();
    for text in texts {
        match Reference::parse(text) {
            Ok(reference) => references.push(reference),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(references)
    } else {
        Err(errors.join("; "))
    }
}

/// One block per image: `present REF` with id, size, tags and digests indented below,
/// or `missing REF`.
fn text(verification: &Verification) -> String {
    let mut out = String::new();
    for check in &verification.images {
        write_check(&mut out, check);
    }
    out
}

fn write_check(out: &mut String, check: &ImageCheck) {
    // Writing to a String cannot fail.
    let Some(image) = &check.image else {
        let _ = writeln!(out, "missing {}", check.reference);
        return;
    };
    let _ = writeln!(out, "present {}", check.reference);
    let _ = writeln!(out, "  id       {}", image.id);
    let _ = writeln!(
        out,
        "  size     {} bytes ({:.1} MB)",
        image.size,
        image.size as f64 / 1e6
    );
    let _ = writeln!(out, "  tags     {}", list(&image.repo_tags));
    let _ = writeln!(out, "  digests  {}", list(&image.repo_digests));
    if image.pinned {
        let _ = writeln!(out, "  pinned   yes (kept out of the kubelet's image GC)");
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::verify::CriImage;
    use rstest::rstest;

    fn check(text: &str, image: Option<CriImage>) -> ImageCheck {
        ImageCheck {
            reference: Reference::parse(text).unwrap(),
            image,
        }
    }

    #[test]
    fn text_shows_present_details_and_missing_names() {
        let present = CriImage {
            id: "sha256:c0ffee".into(),
            size: 4_404_019,
            repo_tags: vec!["docker.io/library/busybox:latest".into()],
            repo_digests: vec![
                "docker.io/library/busybox@sha256:d1".into(),
                "docker.io/library/busybox@sha256:d2".into(),
            ],
            pinned: true,
        };
        let verification = Verification::new(
            "/s".into(),
            vec![
                check("busybox", Some(present)),
                check("127.0.0.1:5000/gone:1", None),
            ],
        );
        assert_eq!(
            text(&verification),
            "present docker.io/library/busybox:latest\n\
             \x20 id       sha256:c0ffee\n\
             \x20 size     4404019 bytes (4.4 MB)\n\
             \x20 tags     docker.io/library/busybox:latest\n\
             \x20 digests  docker.io/library/busybox@sha256:d1 docker.io/library/busybox@sha256:d2\n\
             \x20 pinned   yes (kept out of the kubelet's image GC)\n\
             missing 127.0.0.1:5000/gone:1\n"
        );
    }

    #[test]
    fn text_marks_empty_lists() {
        let image = CriImage {
            id: "sha256:1".into(),
            size: 0,
            repo_tags: vec![],
            repo_digests: vec![],
            pinned: false,
        };
        let out = text(&Verification::new(
            "/s".into(),
            vec![check("busybox", Some(image))],
        ));
        assert!(out.contains("  tags     -\n"), "{out}");
        assert!(out.contains("  digests  -\n"), "{out}");
        assert!(!out.contains("pinned"), "{out}");
    }

    #[rstest]
    #[case(&["busybox"], Ok(vec!["docker.io/library/busybox:latest"]))]
    #[case(
        &["busybox", "127.0.0.1:5000/a/b:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"],
        Ok(vec![
            "docker.io/library/busybox:latest",
            "127.0.0.1:5000/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ])
    )]
    #[case(&["Busybox"], Err(vec!["\"Busybox\"", "lowercase"]))]
    #[case(&["ok", "a//b", "x:-bad"], Err(vec!["\"a//b\"", "\"x:-bad\""]))]
    fn references_are_normalised_or_every_bad_one_named(
        #[case] input: &[&str],
        #[case] expected: Result<Vec<&str>, Vec<&str>>,
    ) {
        let texts: Vec<String> = input.iter().map(|s| s.to_string()).collect();
        match (parse_all(&texts), expected) {
            (Ok(references), Ok(names)) => {
                let got: Vec<String> = references.iter().map(|r| r.to_string()).collect();
                assert_eq!(got, names);
            }
            (Err(message), Err(needles)) => {
                for needle in needles {
                    assert!(message.contains(needle), "{message} lacks {needle}");
                }
            }
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }
}

//! Image profiles the benchmark pulls: layer sizes, built and pushed with the builder.

use serde::Serialize;

use crate::builder::{Compression, ImageSpec, LayerSource};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// An image shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// Name used on the command line and in reports.
    pub name: String,
    /// Layer sizes in bytes, bottom first.
    pub layers: Vec<u64>,
}

impl Profile {
    /// Total bytes of all layers.
    pub fn total(&self) -> u64 {
        self.layers.iter().sum()
    }

    /// The same shape with every layer scaled by `factor` (at least 1 KiB each).
    pub fn scaled(&self, factor: f64) -> Profile {
        Profile {
            name: self.name.clone(),
            layers: self
                .layers
                .iter()
                .map(|&size| ((size as f64 * factor).round() as u64).max(KIB))
                .collect(),
        }
    }

    /// An image spec of random (incompressible) layers. Seeds derive from the profile
    /// name and layer sizes, so pushing the same profile twice pushes the same blobs,
    /// and no two profiles share a layer.
    pub fn spec(&self) -> ImageSpec {
        let base = self.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        ImageSpec {
            layers: self
                .layers
                .iter()
                .enumerate()
                .map(|(i, &size)| LayerSource::Random {
                    size,
                    seed: base ^ (size.rotate_left(17)) ^ (i as u64 + 1),
                })
                .collect(),
            // Random bytes do not compress: level 0 keeps building fast and the blob
            // size equal to what goes over the wire.
            compression: Compression::Gzip { level: 0 },
            ..ImageSpec::default()
        }
    }
}

/// The built-in profiles.
///
/// - `typical`: about 75 MB in 8 layers from 16 KiB to 40 MiB, the shape of a
///   common application image;
/// - `fat`: one 400 MB layer plus two small ones (ML runtimes, big SDKs);
/// - `many`: 40 layers of 1 MiB.
pub fn builtin() -> Vec<Profile> {
    vec![
        Profile {
            name: "typical".into(),
            layers: vec![
                16 * KIB,
                512 * KIB,
                2 * MIB,
                4 * MIB,
                8 * MIB,
                8 * MIB,
                10 * MIB,
                40 * MIB,
            ],
        },
        Profile {
            name: "fat".into(),
            layers: vec![16 * KIB, 400_000_000, MIB],
        },
        Profile {
            name: "many".into(),
            layers: vec![MIB; 40],
        },
    ]
}

/// Resolves `--profiles`: comma-separated built-in names.
pub fn select(spec: &str) -> Result<Vec<Profile>, String> {
    let all = builtin();
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            all.iter().find(|p| p.name == name).cloned().ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
                format!("unknown profile {name:?} (built in: {})", names.join(", "))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_shapes() {
        let all = builtin();
        let typical = &all[0];
        assert_eq!(typical.layers.len(), 8);
        let mb = typical.total() as f64 / 1e6;
        assert!((70.0..80.0).contains(&mb), "typical is {mb} MB");
        assert_eq!(*typical.layers.iter().min().unwrap(), 16 * KIB);
        assert_eq!(*typical.layers.iter().max().unwrap(), 40 * MIB);
        assert!(all[1].layers.contains(&400_000_000));
        assert_eq!(all[2].layers, vec![MIB; 40]);
    }

    #[test]
    fn scaling_keeps_the_shape() {
        let small = builtin()[0].scaled(0.1);
        assert_eq!(small.layers.len(), 8);
        assert_eq!(small.layers[7], 4 * MIB);
        assert_eq!(small.layers[0], 1638);
        assert_eq!(builtin()[2].scaled(0.0001).layers[0], KIB);
    }

    #[test]
    fn seeds_are_stable_and_distinct() {
        let a = builtin()[0].spec();
        let b = builtin()[0].spec();
        let c = builtin()[2].spec();
        let seeds = |s: &ImageSpec| -> Vec<u64> {
            s.layers
                .iter()
                .map(|l| match l {
                    LayerSource::Random { seed, .. } => *seed,
                    LayerSource::Files(_) | LayerSource::Tar(_) => unreachable!(),
                })
                .collect()
        };
        assert_eq!(seeds(&a), seeds(&b));
        let mut all = seeds(&a);
        all.extend(seeds(&c));
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "profiles must not share layers");
        assert!(select("typical,huge").unwrap_err().contains("huge"));
    }
}

//! The tagged configuration of all seven architectures and the one `build` entry point.

use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Which architecture to build, with its settings. Serialised with an `"model"` tag:
/// `{"model": "fno", "n_modes": [16, 16], ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ModelConfig {
    /// Convolutional neural operator (U-Net with anti-aliased activations).
    Cno(crate::cno::CnoConfig),
    /// DeepONet with MLP branch and trunk.
    Don(crate::deeponet::DeepOnetConfig),
    /// DeepONet with a CNN branch.
    DonCnn(crate::deeponet::DeepOnetCnnConfig),
    /// POD-DeepONet: the trunk is a POD basis of the training outputs.
    PodDon(crate::deeponet::pod::PodDeepOnetConfig),
    /// Fourier neural operator.
    Fno(crate::fno::FnoConfig),
    /// Tucker-factorized FNO: an [`crate::fno::FnoConfig`] whose `factorization` defaults
    /// to Tucker (and whose `rank` to [`crate::fno::TFNO_DEFAULT_RANK`]).
    Tfno(crate::fno::FnoConfig),
    /// Localized neural operator (FNO blocks with differential and DISCO kernels).
    LocalNo(crate::local_no::LocalNoConfig),
    /// Causal dilated convolutions: delay-equivariant by construction.
    Causal(crate::causal::CausalConfig),
}

impl ModelConfig {
    /// The short name used on the command line and in reports (`fno`, `cno`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            ModelConfig::Cno(_) => "cno",
            ModelConfig::Don(_) => "don",
            ModelConfig::DonCnn(_) => "don_cnn",
            ModelConfig::PodDon(_) => "pod_don",
            ModelConfig::Fno(_) => "fno",
            ModelConfig::Tfno(_) => "tfno",
            ModelConfig::LocalNo(_) => "local_no",
            ModelConfig::Causal(_) => "causal",
        }
    }
}

impl ModelConfig {
    /// The tagged JSON form (`{"model": "fno", ...}`), as [`NeuralOperator::config_json`]
    /// returns it.
    pub fn to_json(&self) -> serde_json::Value {
        // A derived `Serialize` of plain fields cannot fail.
        serde_json::to_value(self).expect("a ModelConfig always serialises")
    }

    /// The built-in configuration a tagged JSON describes; an error naming the tag if it
    /// is not one of the seven built-in architectures or the settings do not parse.
    pub fn from_json(json: &serde_json::Value) -> Result<Self> {
        let name = crate::registry::architecture_of(json)?;
        if !crate::registry::BUILTIN_ARCHITECTURES.contains(&name) {
            return Err(ModelError::UnknownArchitecture {
                name: name.to_string(),
                known: crate::registry::BUILTIN_ARCHITECTURES.join(", "),
            });
        }
        serde_json::from_value(json.clone()).map_err(|e| ModelError::InvalidConfig {
            model: "built-in model",
            reason: explain_parse_error(&e.to_string(), name),
        })
    }

    /// The built-in configuration of `model`; an error for an architecture that is not one
    /// of the seven (a user model: use its [`NeuralOperator::config_json`]).
    pub fn from_model(model: &dyn NeuralOperator) -> Result<Self> {
        Self::from_json(&model.config_json())
    }
}

/// Builds the model a config describes, with its weights taken from (or created in) `vb`.
///
/// The configuration is validated first, and its parameter count bounded (with checked
/// arithmetic) and compared with the available memory, so that an absurd size is an error
/// before anything is allocated.
pub fn build(config: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    config.validate()?;
    let bytes = config
        .param_bound()
        .and_then(|n| n.checked_mul(vb.dtype().size_in_bytes() as u128));
    crate::inference::ensure_fits(
        || {
            let count = config
                .param_bound()
                .map_or("an overflowing number of".to_string(), |n| {
                    format!("up to {n}")
                });
            format!(
                "the {} configuration ({count} parameters as {:?}; its sizes: {})",
                config.name(),
                vb.dtype(),
                size_fields(config)
            )
        },
        bytes,
    )?;
    match config {
        ModelConfig::Cno(c) => crate::cno::build(c, vb),
        ModelConfig::Don(c) => crate::deeponet::build_don(c, vb),
        ModelConfig::DonCnn(c) => crate::deeponet::build_don_cnn(c, vb),
        ModelConfig::PodDon(c) => crate::deeponet::pod::build(c, vb),
        ModelConfig::Fno(c) => crate::fno::build(c, vb),
        // TFNO is FNO with a factorization, Tucker unless the config names one.
        ModelConfig::Tfno(c) => crate::fno::build(&c.tfno(), vb),
        ModelConfig::LocalNo(c) => crate::local_no::build(c, vb),
        ModelConfig::Causal(c) => crate::causal::build(c, vb),
    }
}

/// The message of a configuration that does not parse, with a suggestion for a misspelt
/// field: serde's "unknown field `hiden_channels`, expected one of …" becomes "unknown
/// field `hiden_channels` in the fno config; did you mean `hidden_channels`? (valid: …)".
pub fn explain_parse_error(message: &str, model: &str) -> String {
    let Some(rest) = message.split_once("unknown field `").map(|(_, r)| r) else {
        return format!("the `{model}` configuration does not parse: {message}");
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return format!("the `{model}` configuration does not parse: {message}");
    };
    let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let closest = valid
        .iter()
        .map(|v| (edit_distance(field, v), *v))
        .min_by_key(|(d, _)| *d);
    let hint = match closest {
        Some((d, v)) if d <= field.len().max(3) / 2 + 1 => format!("; did you mean `{v}`?"),
        _ => String::new(),
    };
    format!(
        "unknown field `{field}` in the {model} config{hint} (valid fields: {})",
        valid.join(", ")
    )
}

/// The Levenshtein distance between two strings (insertions, deletions, substitutions).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Checked products and sums for parameter bounds: `None` means "overflowed".
fn mul(factors: &[usize]) -> Option<u128> {
    factors
        .iter()
        .try_fold(1u128, |acc, &f| acc.checked_mul(f as u128))
}

fn sum(terms: &[Option<u128>]) -> Option<u128> {
    terms
        .iter()
        .try_fold(0u128, |acc, t| acc.checked_add((*t)?))
}

/// `ceil(ratio · width)` as a width, `None` if not finite or absurd.
fn scaled(ratio: f64, width: usize) -> Option<usize> {
    let w = (ratio * width as f64).ceil();
    (0.0..1e15).contains(&w).then_some((w as usize).max(1))
}

/// Parameters of a dense stack of widths `widths` (weights and biases).
fn mlp(widths: &[usize]) -> Option<u128> {
    let layers: Vec<Option<u128>> = widths
        .windows(2)
        .map(|w| sum(&[mul(&[w[0], w[1]]), Some(w[1] as u128)]))
        .collect();
    sum(&layers)
}

/// Lifting and projection of the FNO-family frame, and the per-block parameters of the
/// spectral weights (full, complex), skips and channel MLP: an upper bound.
/// The configuration's numeric fields as `name value` pairs (what a too-large error shows
/// so the reader sees which size to reduce).
fn size_fields(config: &ModelConfig) -> String {
    let json = config.to_json();
    let Some(fields) = json.as_object() else {
        return json.to_string();
    };
    fields
        .iter()
        .filter(|(_, v)| v.is_number() || v.is_array())
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fno_family(
    (c_in, c_out, h, n_layers): (usize, usize, usize, usize),
    n_modes: &[usize],
    ratios: [f64; 3],
    extra_per_block: Option<u128>,
) -> Option<u128> {
    let lift = scaled(ratios[0], h)?;
    let proj = scaled(ratios[1], h)?;
    let expansion = scaled(ratios[2], h)?;
    let modes = n_modes
        .iter()
        .try_fold(1usize, |acc, &m| acc.checked_mul(m))?;
    let block = sum(&[
        mul(&[2, h, h, modes]),
        mul(&[h, h]),
        mul(&[2, h, expansion]),
        mul(&[4, h]),
        extra_per_block,
    ]);
    sum(&[
        mlp(&[c_in.checked_add(n_modes.len())?, lift, h]),
        mlp(&[h, proj, c_out]),
        block.and_then(|b| b.checked_mul(n_layers as u128)),
    ])
}

impl ModelConfig {
    /// Checks every field's range (zero sizes, non-finite or negative scalars, modes beyond
    /// the grid) with an error naming the field and what is allowed. [`build`] calls it.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(ModelError::InvalidConfig {
                model: self.name(),
                reason,
            })
        };
        let padding = match self {
            ModelConfig::Fno(c) | ModelConfig::Tfno(c) => c.domain_padding,
            ModelConfig::LocalNo(c) => c.domain_padding,
            _ => None,
        };
        if let Some(p) = padding {
            if !(p.is_finite() && (0.0..=10.0).contains(&p)) {
                return bad(format!("domain_padding must be finite in [0, 10], got {p}"));
            }
        }
        let modes = match self {
            ModelConfig::Fno(c) | ModelConfig::Tfno(c) => Some(&c.n_modes),
            ModelConfig::LocalNo(c) => Some(&c.n_modes),
            _ => None,
        };
        if let Some(m) = modes {
            if m.contains(&0) {
                return bad(format!("n_modes entries must be at least 1, got {m:?}"));
            }
        }
        match self {
            ModelConfig::Fno(c) | ModelConfig::Tfno(c) => {
                if let Some(no_layers::layers::spectral::tucker::TuckerRank::Fraction(r)) = c.rank {
                    if !(r.is_finite() && r > 0.0) {
                        return bad(format!("rank must be a finite fraction > 0, got {r}"));
                    }
                }
                if c.hidden_channels == 0 || c.n_layers == 0 {
                    return bad(format!(
                        "hidden_channels ({}) and n_layers ({}) must be at least 1",
                        c.hidden_channels, c.n_layers
                    ));
                }
                for (name, r) in [
                    ("lifting_channel_ratio", c.lifting_channel_ratio),
                    ("projection_channel_ratio", c.projection_channel_ratio),
                    ("channel_mlp_expansion", c.channel_mlp_expansion),
                ] {
                    if !(r.is_finite() && r >= 0.0) {
                        return bad(format!("{name} must be finite and >= 0, got {r}"));
                    }
                }
            }
            ModelConfig::LocalNo(c) => validate_local_no(c)?,
            ModelConfig::Cno(c) if !c.negative_slope.is_finite() || c.upsampling == 0 => {
                return bad(format!(
                    "negative_slope must be finite ({}) and upsampling at least 1 ({})",
                    c.negative_slope, c.upsampling
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// An upper bound of the parameter count, computed with checked arithmetic from the
    /// configuration alone (`None`: the count overflows). [`build`] compares it with the
    /// available memory before building.
    pub fn param_bound(&self) -> Option<u128> {
        match self {
            ModelConfig::Fno(c) | ModelConfig::Tfno(c) => fno_family(
                (c.in_channels, c.out_channels, c.hidden_channels, c.n_layers),
                &c.n_modes,
                [
                    c.lifting_channel_ratio,
                    c.projection_channel_ratio,
                    c.channel_mlp_expansion,
                ],
                Some(0),
            ),
            ModelConfig::LocalNo(c) => {
                let h = c.hidden_channels;
                let [k0, k1] = c.disco_kernel_shape;
                let [nt, nx] = c.default_in_shape;
                let k = c.fin_diff_kernel_size;
                let local = sum(&[
                    mul(&[h, h, k0, k1]),
                    mul(&[h, h, k, k]),
                    mul(&[nt, nx, k0, k1]),
                ]);
                fno_family(
                    (c.in_channels, c.out_channels, h, c.n_layers),
                    &c.n_modes,
                    [
                        c.lifting_channel_ratio,
                        c.projection_channel_ratio,
                        c.channel_mlp_expansion,
                    ],
                    local,
                )
            }
            ModelConfig::Cno(c) => {
                let widest = u32::try_from(c.n_layers)
                    .ok()
                    .and_then(|l| 2usize.checked_pow(l))?
                    .checked_mul(c.channel_multiplier)?
                    .checked_mul(2)?;
                let convs = sum(&[
                    mul(&[
                        c.n_layers.checked_add(1)?,
                        c.n_res.checked_mul(2)?.checked_add(4)?,
                    ]),
                    mul(&[2, c.n_res_neck]),
                    Some(4),
                ]);
                let per_conv = mul(&[widest, widest, c.kernel_size, c.kernel_size]);
                sum(&[
                    convs.and_then(|n| n.checked_mul(per_conv?)),
                    mul(&[
                        4,
                        c.latent_lift_proj_dim,
                        widest,
                        c.kernel_size,
                        c.kernel_size,
                    ]),
                ])
            }
            ModelConfig::Don(c) => {
                let p = mul(&[c.in_channels, c.grid[0], c.grid[1]])?;
                let mut branch = vec![usize::try_from(p).ok()?];
                branch.extend(&c.branch_hidden);
                branch.push(c.n_basis);
                let mut trunk = vec![2];
                trunk.extend(&c.trunk_hidden);
                trunk.push(c.n_basis);
                sum(&[mlp(&branch), mlp(&trunk), Some(c.out_channels as u128)])
            }
            ModelConfig::DonCnn(c) => {
                let mut convs = Vec::new();
                let mut prev = c.in_channels;
                let k_max = c.kernel_sizes.iter().copied().max().unwrap_or(1);
                for &ch in &c.conv_channels {
                    convs.push(mul(&[prev, ch, k_max, k_max]));
                    prev = ch;
                }
                let flat = usize::try_from(mul(&[prev, c.grid[0], c.grid[1]])?).ok()?;
                let mut branch = vec![flat];
                branch.extend(&c.branch_hidden);
                branch.push(c.n_basis);
                let mut trunk = vec![2];
                trunk.extend(&c.trunk_hidden);
                trunk.push(c.n_basis);
                convs.extend([mlp(&branch), mlp(&trunk)]);
                sum(&convs)
            }
            ModelConfig::Causal(c) => {
                // Lifting, per block a dilated kernel, a 1x1 mix and a bias, then the
                // two-layer projection: bounded by (n_layers + 2) such blocks.
                let h = c.hidden_channels;
                let per_block = sum(&[
                    mul(&[h, h, c.kernel_time, c.kernel_space]),
                    mul(&[h, h]),
                    Some(h as u128),
                ]);
                sum(&[
                    per_block.and_then(|b| b.checked_mul(c.n_layers.checked_add(2)? as u128)),
                    mul(&[h, c.in_channels.checked_add(c.out_channels)?]),
                ])
            }
            ModelConfig::PodDon(c) => {
                let p = usize::try_from(mul(&[c.grid[0], c.grid[1]])?).ok()?;
                let modes = c
                    .modes
                    .iter()
                    .try_fold(1usize, |acc, &m| acc.checked_add(m))?;
                let mut branch = vec![p.checked_mul(c.in_channels)?];
                branch.extend(&c.branch_hidden);
                branch.push(modes);
                sum(&[mlp(&branch), mul(&[p, modes]), mul(&[p, c.out_channels])])
            }
        }
    }
}

fn validate_local_no(c: &crate::local_no::LocalNoConfig) -> Result<()> {
    let bad = |reason: String| {
        Err(ModelError::InvalidConfig {
            model: "local_no",
            reason,
        })
    };
    if c.hidden_channels == 0 || c.n_layers == 0 || c.in_channels == 0 || c.out_channels == 0 {
        return bad(format!(
            "in_channels ({}), out_channels ({}), hidden_channels ({}) and n_layers ({}) must be at least 1",
            c.in_channels, c.out_channels, c.hidden_channels, c.n_layers
        ));
    }
    if c.default_in_shape.contains(&0) {
        return bad(format!(
            "default_in_shape entries must be at least 1, got {:?}",
            c.default_in_shape
        ));
    }
    for (axis, (&m, &n)) in c.n_modes.iter().zip(&c.default_in_shape).enumerate() {
        if m > n {
            return bad(format!(
                "n_modes[{axis}] = {m} exceeds the grid's {n} points on that axis (default_in_shape {:?})",
                c.default_in_shape
            ));
        }
    }
    if !c.domain_length.iter().all(|l| l.is_finite() && *l > 0.0) {
        return bad(format!(
            "domain_length entries must be finite and > 0, got {:?}",
            c.domain_length
        ));
    }
    if let Some(r) = c.radius_cutoff {
        if !(r.is_finite() && r > 0.0) {
            return bad(format!("radius_cutoff must be finite and > 0, got {r}"));
        }
    }
    for (name, r) in [
        ("lifting_channel_ratio", c.lifting_channel_ratio),
        ("projection_channel_ratio", c.projection_channel_ratio),
        ("channel_mlp_expansion", c.channel_mlp_expansion),
    ] {
        if !(r.is_finite() && r >= 0.0) {
            return bad(format!("{name} must be finite and >= 0, got {r}"));
        }
    }
    if c.disco_groups == 0 || c.fin_diff_kernel_size.is_multiple_of(2) {
        return bad(format!(
            "disco_groups ({}) must be at least 1 and fin_diff_kernel_size ({}) odd",
            c.disco_groups, c.fin_diff_kernel_size
        ));
    }
    Ok(())
}

//! `--set a.b.c=VALUE` overrides: applied to the fully resolved TOML tree of a configuration,
//! so every valid key exists there and an unknown one is reported with the valid keys beside it;
//! setting a tagged choice's `type` drops the old variant's fields so the new one's defaults fill
//! in. Also the overrides that select a baseline method with its particle rule.

use crate::config::{ConfigError, RunConfig};

impl RunConfig {
    /// Applies `KEY=VALUE` overrides in order (dotted keys into the config) and re-validates.
    pub fn with_overrides(&self, sets: &[String], origin: &str) -> Result<Self, ConfigError> {
        let mut cfg = self.clone();
        for assignment in sets {
            let err = |message: String| ConfigError::Override {
                assignment: assignment.clone(),
                message,
            };
            let (key, raw) = assignment
                .split_once('=')
                .ok_or_else(|| err("expected KEY=VALUE".into()))?;
            let key = key.trim();
            let mut tree = toml::Value::try_from(&cfg).map_err(|e| err(e.to_string()))?;
            set_dotted(&mut tree, key, parse_value(raw.trim())).map_err(err)?;
            // Round-trip through the struct so defaults of a newly chosen variant appear as keys.
            cfg = tree
                .try_into()
                .map_err(|e: toml::de::Error| err(e.to_string().trim_end().to_string()))?;
        }
        cfg.validate(&format!("{origin} with --set overrides"))?;
        Ok(cfg)
    }
}

/// A `--set` value: TOML syntax when it parses (numbers, booleans, arrays, inline tables,
/// quoted strings), otherwise the raw text as a string (so `data.path=x.npy` needs no quotes).
fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("key v"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Sets `key` (dotted) in `tree`; every component must already exist, except that an inline
/// table may fill an absent optional section (e.g. `train.prior_refit={steps=100, ...}`), whose
/// fields serde then checks.
fn set_dotted(tree: &mut toml::Value, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("malformed key `{key}`"));
    }
    let mut node = tree;
    for (i, part) in parts.iter().enumerate() {
        let here = parts[..i].join(".");
        let table = node
            .as_table_mut()
            .ok_or_else(|| format!("`{here}` is a value, not a table"))?;
        if !table.contains_key(*part) {
            if i + 1 == parts.len() && value.is_table() {
                table.insert(part.to_string(), value);
                return Ok(());
            }
            let mut valid: Vec<String> = table
                .keys()
                .map(|k| {
                    if here.is_empty() {
                        k.clone()
                    } else {
                        format!("{here}.{k}")
                    }
                })
                .collect();
            valid.sort();
            return Err(format!(
                "unknown key `{}`; valid keys{}: {}",
                parts[..=i].join("."),
                if here.is_empty() {
                    String::new()
                } else {
                    format!(" under `{here}`")
                },
                valid.join(", ")
            ));
        }
        if i + 1 == parts.len() {
            let slot = table.get_mut(*part).expect("checked");
            if *part == "type" {
                // A new variant: drop the old variant's fields so its defaults fill in.
                *table = toml::Table::from_iter([("type".to_string(), value)]);
            } else {
                *slot = value;
            }
            return Ok(());
        }
        node = table.get_mut(*part).expect("checked");
    }
    unreachable!("loop returns on the last component")
}

/// `--set` overrides that select `method` together with the particle rule and step size it runs
/// with on the synthetic benchmarks: PGD and MPGD have no preconditioner and diverge at IPLD's
/// step 0.1 (step sizes measured in docs/baselines.md).
pub fn method_overrides(method: &str) -> Result<Vec<String>, ConfigError> {
    let v: &[&str] = match method {
        "ipld" => &["method=ipld"],
        "diffusion-vae" => &["method=diffusion-vae"],
        "pgd" => &[
            "method=pgd",
            "particles.update.type=langevin",
            "particles.step_size.initial=0.01",
        ],
        "mpgd" => &[
            "method=mpgd",
            "particles.update.type=kinetic-langevin",
            "particles.step_size.initial=0.03",
        ],
        other => {
            return Err(ConfigError::Invalid {
                origin: "method".into(),
                message: format!("unknown method `{other}`; valid: ipld, diffusion-vae, pgd, mpgd"),
            });
        }
    };
    Ok(v.iter().map(|s| s.to_string()).collect())
}

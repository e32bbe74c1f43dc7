//! The experiments' markdown result files, written atomically.

use std::path::Path;

use anyhow::Context;

/// Writes `md` to `out_dir/results.md` (creating the directory) and says where.
pub fn write_results(out_dir: &Path, md: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join("results.md");
    ipld_data::write_atomically(&path, md.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

//! Configuration files in the layout before the tagged model choices, read as today's layout, so
//! saved runs (the committed results, users' run directories) still load and resume. That layout
//! had `[model.eps]` (the MLP, always required) and an optional `[model.dit]` that replaced it;
//! `[model.decoder]` (the linear decoder, always required) and an optional `[model.conv_decoder]`
//! that replaced it, with its own `sigma`. The sections the old rules ignored (the MLP beside a
//! DiT, the linear decoder beside a convolutional one) are dropped.
//!
//! Before issue 21, `method = "pgd"` and `"mpgd"` were IPLD with the `langevin` and
//! `kinetic-langevin` rules; they now name the published methods, so a config with the old
//! pairing reads as `method = "ipld"` with that rule ([`upgrade_method`]).

use toml::{Table, Value};

/// Rewrites an old-layout `model` table in place; returns whether it was one.
pub(super) fn upgrade(tree: &mut Table) -> Result<bool, String> {
    let Some(Value::Table(model)) = tree.get_mut("model") else {
        return Ok(false);
    };
    // Old files always had `[model.eps]`; a decoder without `type` is old too.
    let untyped_decoder =
        matches!(model.get("decoder"), Some(Value::Table(d)) if !d.contains_key("type"));
    let legacy = untyped_decoder
        || ["eps", "dit", "conv_decoder"]
            .iter()
            .any(|k| model.contains_key(*k));
    if !legacy {
        return Ok(false);
    }
    if let Some(k) = model
        .keys()
        .find(|k| !["eps", "dit", "decoder", "conv_decoder"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown field `model.{k}` in an old-layout config (expected eps, dit, decoder, \
             conv_decoder; today's layout has model.prior and model.decoder with a `type`)"
        ));
    }
    let section = |model: &mut Table, key: &str| -> Result<Option<Table>, String> {
        match model.remove(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(t)),
            Some(_) => Err(format!("`model.{key}` must be a table")),
        }
    };
    let (eps, dit) = (section(model, "eps")?, section(model, "dit")?);
    let (linear, conv) = (section(model, "decoder")?, section(model, "conv_decoder")?);
    let tagged = |kind: &str, mut t: Table| {
        t.insert("type".into(), Value::String(kind.into()));
        Value::Table(t)
    };
    let prior = match (dit, eps) {
        (Some(d), _) => tagged("dit", d),
        (None, Some(e)) => tagged("mlp", e),
        (None, None) => return Err("missing field `model.eps` (old layout)".into()),
    };
    let decoder = match (conv, linear) {
        (Some(c), _) => tagged("conv", c),
        (None, Some(l)) => tagged("linear", l),
        (None, None) => return Err("missing field `model.decoder` (old layout)".into()),
    };
    model.insert("prior".into(), prior);
    model.insert("decoder".into(), decoder);
    Ok(true)
}

/// Rewrites the old meaning of `method = "pgd"` (with `particles.update.type = "langevin"`) and
/// `"mpgd"` (with `"kinetic-langevin"`) to `method = "ipld"` with that rule; returns whether it
/// did.
pub(super) fn upgrade_method(tree: &mut Table) -> bool {
    let rule = tree
        .get("particles")
        .and_then(|p| p.get("update"))
        .and_then(|u| u.get("type"))
        .and_then(Value::as_str);
    let old = matches!(
        (tree.get("method").and_then(Value::as_str), rule),
        (Some("pgd"), Some("langevin")) | (Some("mpgd"), Some("kinetic-langevin"))
    );
    if old {
        tree.insert("method".into(), Value::String("ipld".into()));
    }
    old
}

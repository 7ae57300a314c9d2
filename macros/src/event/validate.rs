//! Compile-time checks of an event enum: the same rules `UpcasterChainBuilder::build` checks
//! at run time, reported at the attribute that breaks them.

use std::collections::{BTreeMap, HashMap};

use quote::ToTokens;

use super::model::{EventEnum, EventVariant};
use crate::errors::{Errors, name_problem};

/// Records every rule the enum breaks.
pub(crate) fn validate(model: &EventEnum<'_>, errors: &mut Errors) {
    let mut names: HashMap<&str, &EventVariant<'_>> = HashMap::new();
    for variant in &model.variants {
        let name_tokens = name_tokens(variant);
        if let Some(problem) = name_problem(&variant.name) {
            errors.spanned(
                &name_tokens,
                format!("stored event name {:?} is invalid: {problem}", variant.name),
            );
        }
        match names.get(variant.name.as_str()) {
            Some(first) => errors.spanned(
                &name_tokens,
                format!(
                    "stored event name {:?} is already used by variant `{}`; every variant \
                     needs its own name",
                    variant.name, first.ident
                ),
            ),
            None => {
                names.insert(&variant.name, variant);
            }
        }
        validate_versions(variant, errors);
    }
}

/// The tokens that gave the variant its stored name: the `name = "..."` literal, else the
/// variant's identifier.
fn name_tokens(variant: &EventVariant<'_>) -> proc_macro2::TokenStream {
    match &variant.name_lit {
        Some(lit) => lit.to_token_stream(),
        None => variant.ident.to_token_stream(),
    }
}

fn validate_versions(variant: &EventVariant<'_>, errors: &mut Errors) {
    if variant.version == 0 {
        match &variant.version_lit {
            Some(lit) => errors.spanned(lit, "schema versions start at 1"),
            None => errors.spanned(variant.ident, "schema versions start at 1"),
        }
        return;
    }
    // Steps that fit, by the version they start from.
    let mut steps = BTreeMap::new();
    for step in &variant.steps {
        if step.from == 0 {
            errors.spanned(
                &step.from_lit,
                "schema versions start at 1: there is no version 0 to upcast from",
            );
        } else if step.from >= variant.version {
            errors.spanned(
                &step.from_lit,
                format!(
                    "an upcaster from version {} needs a schema version above {}, but `{}` is \
                     at version {}; raise `version` or remove this step",
                    step.from, step.from, variant.ident, variant.version
                ),
            );
        } else if steps.insert(step.from, step).is_some() {
            errors.spanned(
                &step.from_lit,
                format!("two upcasters from version {}", step.from),
            );
        }
    }
    let Some(&lowest) = steps.keys().next() else {
        return;
    };
    let missing: Vec<String> = (lowest..variant.version)
        .filter(|from| !steps.contains_key(from))
        .map(|from| format!("{from} => (version {from} to {})", from + 1))
        .collect();
    if !missing.is_empty() {
        let at = variant.upcasters_kw.as_ref().map_or_else(
            || variant.ident.to_token_stream(),
            ToTokens::to_token_stream,
        );
        errors.spanned(
            at,
            format!(
                "the upcasters of `{}` have a gap: the chain from version {lowest} must reach \
                 version {}, but there is no step {}",
                variant.ident,
                variant.version,
                missing.join(", no step ")
            ),
        );
    }
}

//! The typed model of an aggregate's state type, read from its `#[aggregate(...)]`
//! attribute. Every problem is recorded, and parsing goes on to find the others.

use syn::{DeriveInput, Expr, ExprLit, Lit, LitInt, LitStr, Type};

use crate::{
    errors::{Errors, name_problem, skip_value},
    fingerprint,
};

/// The state type deriving `Aggregate`.
pub(crate) struct AggregateModel<'a> {
    pub(crate) input: &'a DeriveInput,
    /// `name = "account"`: the stream-id prefix.
    pub(crate) name: Option<LitStr>,
    pub(crate) event: Option<Type>,
    pub(crate) command: Option<Type>,
    pub(crate) error: Option<Type>,
    /// `snapshot_every = N`.
    pub(crate) snapshot_every: Option<u64>,
    /// `snapshot_version = N`, or the fingerprint with `snapshot_version = "fingerprint"`.
    pub(crate) snapshot_version: Option<u32>,
}

const USAGE: &str = "expected #[aggregate(name = \"...\", event = Type, command = Type, \
                     error = Type)] with optional `snapshot_every = N` and \
                     `snapshot_version = N` or `snapshot_version = \"fingerprint\"`";

impl<'a> AggregateModel<'a> {
    /// Reads the attribute and checks it; every problem goes to `errors`.
    pub(crate) fn parse(input: &'a DeriveInput, errors: &mut Errors) -> Self {
        let mut model = Self {
            input,
            name: None,
            event: None,
            command: None,
            error: None,
            snapshot_every: None,
            snapshot_version: None,
        };
        if let syn::Data::Union(data) = &input.data {
            errors.spanned(
                data.union_token,
                "#[derive(Aggregate)] applies to a struct or an enum holding the state",
            );
        }
        let attrs: Vec<_> = input
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("aggregate"))
            .collect();
        if attrs.is_empty() {
            errors.spanned(&input.ident, format!("missing #[aggregate(...)]: {USAGE}"));
            return model;
        }
        for attr in attrs {
            if let Err(error) = attr.parse_nested_meta(|meta| model.parse_key(&meta, errors)) {
                errors.push(error);
            }
        }
        let missing: Vec<&str> = [
            ("name = \"...\"", model.name.is_none()),
            ("event = Type", model.event.is_none()),
            ("command = Type", model.command.is_none()),
            ("error = Type", model.error.is_none()),
        ]
        .into_iter()
        .filter_map(|(key, absent)| absent.then_some(key))
        .collect();
        if !missing.is_empty() {
            errors.spanned(
                &input.ident,
                format!("#[aggregate(...)] is missing `{}`", missing.join("`, `")),
            );
        }
        model
    }

    fn parse_key(
        &mut self,
        meta: &syn::meta::ParseNestedMeta<'_>,
        errors: &mut Errors,
    ) -> syn::Result<()> {
        let key = meta.path.get_ident().map(ToString::to_string);
        match key.as_deref() {
            Some("name") => {
                let lit: LitStr = meta.value()?.parse()?;
                if let Some(problem) = name_problem(&lit.value()) {
                    errors.spanned(&lit, format!("invalid aggregate type name: {problem}"));
                }
                once(&mut self.name, lit, &meta.path, errors);
            }
            Some("event") => once(&mut self.event, meta.value()?.parse()?, &meta.path, errors),
            Some("command") => once(
                &mut self.command,
                meta.value()?.parse()?,
                &meta.path,
                errors,
            ),
            Some("error") => once(&mut self.error, meta.value()?.parse()?, &meta.path, errors),
            Some("snapshot_every") => {
                let lit: LitInt = meta.value()?.parse()?;
                let every: u64 = lit.base10_parse()?;
                if every == 0 {
                    errors.spanned(
                        &lit,
                        "`snapshot_every` must be at least 1; leave it out to never snapshot",
                    );
                }
                once(&mut self.snapshot_every, every, &meta.path, errors);
            }
            Some("snapshot_version") => {
                let version = match meta.value()?.parse::<Expr>()? {
                    Expr::Lit(ExprLit {
                        lit: Lit::Int(lit), ..
                    }) => lit.base10_parse()?,
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(lit), ..
                    }) if lit.value() == "fingerprint" => fingerprint::snapshot_version(self.input),
                    other => {
                        errors.spanned(
                            other,
                            "`snapshot_version` takes a number, or \"fingerprint\" to derive \
                             it from the state's fields",
                        );
                        return Ok(());
                    }
                };
                once(&mut self.snapshot_version, version, &meta.path, errors);
            }
            _ => {
                errors.spanned(&meta.path, format!("unknown aggregate attribute; {USAGE}"));
                skip_value(meta)?;
            }
        }
        Ok(())
    }
}

/// Sets a key given once; a second value is an error at its key.
fn once<T>(slot: &mut Option<T>, value: T, key: &syn::Path, errors: &mut Errors) {
    if slot.is_some() {
        errors.spanned(key, "this key is given twice");
    }
    *slot = Some(value);
}

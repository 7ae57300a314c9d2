//! The typed model of an event enum, read from the `DeriveInput` and its `#[event]`
//! attributes. Parse problems are recorded and parsing goes on, so every mistake is reported.

use syn::{
    Attribute, Data, DeriveInput, Fields, Ident, LitInt, LitStr, Path, Token, Type,
    parse::ParseStream,
};

use crate::errors::{Errors, skip_value};

/// An enum deriving `DomainEvent`.
pub(crate) struct EventEnum<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) variants: Vec<EventVariant<'a>>,
}

/// One variant: one stored event type.
pub(crate) struct EventVariant<'a> {
    pub(crate) ident: &'a Ident,
    /// The stored type name: `name = "..."`, else the variant's name.
    pub(crate) name: String,
    /// The `name = "..."` literal, when given (errors about the name point at it).
    pub(crate) name_lit: Option<LitStr>,
    /// The latest schema version (default 1).
    pub(crate) version: u32,
    /// The `version = N` literal, when given.
    pub(crate) version_lit: Option<LitInt>,
    /// The `upcasters(...)` keyword, when given (a gap in the chain points at it).
    pub(crate) upcasters_kw: Option<Path>,
    pub(crate) steps: Vec<Step>,
    pub(crate) shape: Shape<'a>,
}

/// `from => path`: the upcaster from version `from` to `from + 1`.
pub(crate) struct Step {
    pub(crate) from: u32,
    pub(crate) from_lit: LitInt,
    pub(crate) path: Path,
}

/// What a variant stores.
pub(crate) enum Shape<'a> {
    /// `Closed`: stored as `{}`.
    Unit,
    /// `Renamed(Renamed)`: stored as the field's own serialization.
    Newtype(&'a Type),
    /// `Deposited { amount: i64 }`: stored as a JSON object of the fields.
    Named(Vec<NamedField<'a>>),
}

/// A named field, with the serde attributes that are passed on to the helper structs.
pub(crate) struct NamedField<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) ty: &'a Type,
    pub(crate) serde_attrs: Vec<&'a Attribute>,
}

/// The field-level serde keys that mean the same on the helper structs as on the variant.
/// Others (`with`, `skip_serializing_if`, `flatten`, ...) would see a reference or change the
/// shape, and are refused.
const SERDE_FIELD_KEYS: [&str; 3] = ["rename", "alias", "default"];

impl<'a> EventEnum<'a> {
    /// Reads the enum. `None` when the input cannot be an event enum at all.
    pub(crate) fn parse(input: &'a DeriveInput, errors: &mut Errors) -> Option<Self> {
        for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
            errors.spanned(
                attr,
                "#[event(...)] belongs on the variants of the enum, not on the enum",
            );
        }
        if !input.generics.params.is_empty() {
            errors.spanned(
                &input.generics,
                "#[derive(DomainEvent)] does not support generic enums: name the concrete types",
            );
        }
        let Data::Enum(data) = &input.data else {
            errors.spanned(
                &input.ident,
                "#[derive(DomainEvent)] applies to an enum whose variants are the event types",
            );
            return None;
        };
        if data.variants.is_empty() {
            errors.spanned(
                &input.ident,
                "an event enum needs at least one variant: each variant is a stored event type",
            );
        }
        let variants = data
            .variants
            .iter()
            .map(|variant| EventVariant::parse(variant, errors))
            .collect();
        Some(Self {
            ident: &input.ident,
            variants,
        })
    }
}

impl<'a> EventVariant<'a> {
    fn parse(variant: &'a syn::Variant, errors: &mut Errors) -> Self {
        let shape = match &variant.fields {
            Fields::Unit => Shape::Unit,
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => {
                Shape::Newtype(&fields.unnamed[0].ty)
            }
            Fields::Unnamed(fields) => {
                errors.spanned(
                    fields,
                    "a tuple variant of an event enum takes exactly one field (stored as that \
                     field's own JSON); name the fields to store them as a JSON object",
                );
                Shape::Unit
            }
            Fields::Named(fields) => Shape::Named(
                fields
                    .named
                    .iter()
                    .filter_map(|field| {
                        Some(NamedField {
                            ident: field.ident.as_ref()?,
                            ty: &field.ty,
                            serde_attrs: serde_attrs(field, errors),
                        })
                    })
                    .collect(),
            ),
        };
        if !matches!(variant.fields, Fields::Named(_)) {
            for field in &variant.fields {
                for attr in field.attrs.iter().filter(|a| a.path().is_ident("serde")) {
                    errors.spanned(
                        attr,
                        "serde attributes apply only to named fields of an event variant",
                    );
                }
            }
        }
        let mut parsed = Self {
            ident: &variant.ident,
            name: variant.ident.to_string(),
            name_lit: None,
            version: 1,
            version_lit: None,
            upcasters_kw: None,
            steps: Vec::new(),
            shape,
        };
        for attr in variant.attrs.iter().filter(|a| a.path().is_ident("event")) {
            if let Err(error) = attr.parse_nested_meta(|meta| parsed.parse_key(&meta, errors)) {
                errors.push(error);
            }
        }
        parsed
    }

    fn parse_key(
        &mut self,
        meta: &syn::meta::ParseNestedMeta<'_>,
        errors: &mut Errors,
    ) -> syn::Result<()> {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            if let Some(first) = &self.name_lit {
                errors.spanned(
                    &lit,
                    format!("`name` is already set to {:?}", first.value()),
                );
            }
            self.name = lit.value();
            self.name_lit = Some(lit);
        } else if meta.path.is_ident("version") {
            let lit: LitInt = meta.value()?.parse()?;
            if self.version_lit.is_some() {
                errors.spanned(
                    &lit,
                    format!("`version` is already set to {}", self.version),
                );
            }
            self.version = lit.base10_parse()?;
            self.version_lit = Some(lit);
        } else if meta.path.is_ident("upcasters") {
            let content;
            syn::parenthesized!(content in meta.input);
            let steps = content.parse_terminated(Step::parse, Token![,])?;
            if self.upcasters_kw.is_some() {
                errors.spanned(
                    &meta.path,
                    "`upcasters` is given twice; list every step in one",
                );
            }
            self.upcasters_kw = Some(meta.path.clone());
            self.steps.extend(steps);
        } else {
            errors.spanned(
                &meta.path,
                "unknown event attribute; expected `name = \"...\"`, `version = N` or \
                 `upcasters(N => path, ...)`",
            );
            skip_value(meta)?;
        }
        Ok(())
    }
}

/// The field's `#[serde(...)]` attributes, each key checked against [`SERDE_FIELD_KEYS`].
fn serde_attrs<'a>(field: &'a syn::Field, errors: &mut Errors) -> Vec<&'a Attribute> {
    let attrs: Vec<_> = field
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("serde"))
        .collect();
    for attr in &attrs {
        let checked = attr.parse_nested_meta(|meta| {
            if !SERDE_FIELD_KEYS.iter().any(|key| meta.path.is_ident(key)) {
                errors.spanned(
                    &meta.path,
                    "#[derive(DomainEvent)] passes only `rename`, `alias` and `default` on to \
                     the stored form; for other serde attributes, put the fields in a struct \
                     and use a one-field variant",
                );
            }
            skip_value(&meta)
        });
        if let Err(error) = checked {
            errors.push(error);
        }
    }
    attrs
}

impl Step {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let from_lit: LitInt = input.parse()?;
        let from = from_lit.base10_parse()?;
        input.parse::<Token![=>]>()?;
        let path: Path = input.parse()?;
        Ok(Self {
            from,
            from_lit,
            path,
        })
    }
}

//! The fingerprint of a state type: a stable hash of its fields' names, types and serde
//! attributes, written as tokens. It changes when the serialized shape of the state is
//! likely to change, and only then.

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::{Attribute, Data, DeriveInput, Fields};

/// The snapshot schema version derived from `input`'s fields: 31 bits (it fits a signed
/// 32-bit column) and never 0.
pub(crate) fn snapshot_version(input: &DeriveInput) -> u32 {
    let hash = fnv1a_32(canonical(input).as_bytes()) & 0x7fff_ffff;
    hash.max(1)
}

/// The text that is hashed: container serde attributes, then each variant (for an enum) and
/// its fields, sorted by name so that reordering fields keeps the fingerprint. The type's own
/// name is left out: renaming the struct does not change its serialized form.
pub(crate) fn canonical(input: &DeriveInput) -> String {
    let mut out = String::from("annals-state-v1;");
    push_serde_attrs(&mut out, &input.attrs);
    match &input.data {
        Data::Struct(data) => push_fields(&mut out, &data.fields),
        Data::Enum(data) => {
            let mut variants: Vec<String> = data
                .variants
                .iter()
                .map(|v| {
                    let mut text = format!("variant {};", v.ident);
                    push_serde_attrs(&mut text, &v.attrs);
                    push_fields(&mut text, &v.fields);
                    text
                })
                .collect();
            variants.sort();
            out.extend(variants);
        }
        Data::Union(data) => push_fields(&mut out, &Fields::Named(data.fields.clone())),
    }
    out
}

fn push_fields(out: &mut String, fields: &Fields) {
    let kind = match fields {
        Fields::Named(_) => "named",
        Fields::Unnamed(_) => "tuple",
        Fields::Unit => "unit",
    };
    let mut texts: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let name = field
                .ident
                .as_ref()
                .map_or_else(|| index.to_string(), ToString::to_string);
            let mut text = format!("{name}:");
            push_tokens(&mut text, field.ty.to_token_stream());
            push_serde_attrs(&mut text, &field.attrs);
            text.push(';');
            text
        })
        .collect();
    // Tuple fields are positional: their order is their identity.
    if matches!(fields, Fields::Named(_)) {
        texts.sort();
    }
    out.push_str(kind);
    out.push('{');
    out.extend(texts);
    out.push('}');
}

fn push_serde_attrs(out: &mut String, attrs: &[Attribute]) {
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        out.push_str("#serde");
        push_tokens(out, attr.meta.to_token_stream());
    }
}

/// Writes tokens one by one, separated by single spaces: the result does not depend on how
/// the source was spaced or split into lines.
fn push_tokens(out: &mut String, tokens: TokenStream) {
    for token in tokens {
        match token {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                    proc_macro2::Delimiter::Brace => ("{", "}"),
                    proc_macro2::Delimiter::Bracket => ("[", "]"),
                    proc_macro2::Delimiter::None => ("", ""),
                };
                out.push_str(open);
                push_tokens(out, group.stream());
                out.push_str(close);
                out.push(' ');
            }
            TokenTree::Ident(ident) => {
                out.push_str(&ident.to_string());
                out.push(' ');
            }
            TokenTree::Punct(punct) => {
                out.push(punct.as_char());
                out.push(' ');
            }
            TokenTree::Literal(literal) => {
                out.push_str(&literal.to_string());
                out.push(' ');
            }
        }
    }
}

/// 32-bit FNV-1a: tiny, stable across compiler and crate versions (unlike `std`'s hashers).
fn fnv1a_32(bytes: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(source: &str) -> u32 {
        snapshot_version(&syn::parse_str(source).unwrap())
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn fingerprint_follows_the_shape_not_the_spelling() {
        let base = version("struct A { total: i64, items: Vec<Vec<u8>> }");
        // Spacing, line breaks, field order and the type's name do not matter.
        assert_eq!(
            base,
            version("struct B {\n items: Vec<Vec<u8> >,\n total: i64 }")
        );
        // A field's type, a field's name, a new field or a serde attribute do.
        assert_ne!(
            base,
            version("struct A { total: i32, items: Vec<Vec<u8>> }")
        );
        assert_ne!(base, version("struct A { sum: i64, items: Vec<Vec<u8>> }"));
        assert_ne!(
            base,
            version("struct A { total: i64, items: Vec<Vec<u8>>, n: u8 }")
        );
        assert_ne!(
            base,
            version("struct A { #[serde(rename = \"t\")] total: i64, items: Vec<Vec<u8>> }")
        );
        assert!(base > 0 && base <= 0x7fff_ffff);
    }

    #[test]
    fn tuple_fields_keep_their_order() {
        assert_ne!(version("struct A(u8, i64);"), version("struct A(i64, u8);"));
    }

    fn struct_source(fields: &[(String, &str)]) -> String {
        let body: Vec<String> = fields.iter().map(|(n, t)| format!("{n}: {t}")).collect();
        format!("struct S {{ {} }}", body.join(", "))
    }

    const TYPES: [&str; 6] = [
        "i64",
        "u8",
        "String",
        "Vec<u8>",
        "Option<Vec<String>>",
        "bool",
    ];

    proptest::proptest! {
        /// Reordering fields keeps the version; changing one field's type changes it.
        #[test]
        fn order_is_ignored_and_types_are_not(
            types in proptest::collection::vec(0..TYPES.len(), 1..8),
            seed in proptest::num::u64::ANY,
            changed in proptest::num::usize::ANY,
        ) {
            let fields: Vec<(String, &str)> = types
                .iter()
                .enumerate()
                .map(|(i, &t)| (format!("f{i}"), TYPES[t]))
                .collect();
            let mut shuffled = fields.clone();
            let len = shuffled.len();
            for i in 0..len {
                let j = (seed.wrapping_mul(i as u64 + 1) % len as u64) as usize;
                shuffled.swap(i, j);
            }
            let base = version(&struct_source(&fields));
            proptest::prop_assert_eq!(base, version(&struct_source(&shuffled)));
            let mut other = fields.clone();
            let k = changed % len;
            let t = TYPES.iter().position(|t| *t == other[k].1).unwrap_or(0);
            other[k].1 = TYPES[(t + 1) % TYPES.len()];
            proptest::prop_assert_ne!(base, version(&struct_source(&other)));
        }
    }
}

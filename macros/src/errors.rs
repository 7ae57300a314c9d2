//! Collects every diagnostic of one derive so a single build shows all of them (serde's
//! `Ctxt`).

use std::fmt::Display;

use quote::ToTokens;

/// The errors found so far, combined into one `syn::Error` at the end.
#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<syn::Error>,
}

impl Errors {
    /// Records an error pointing at `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error already built (a parse error, usually).
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// `Ok` when nothing was recorded, else every error at once.
    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.combined {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The naming rules of `annals::EventType` and `annals::StreamId` (non-empty, at most 256
/// bytes, no NUL), checked at compile time. Returns why `name` breaks them.
pub(crate) fn name_problem(name: &str) -> Option<String> {
    const MAX_NAME_BYTES: usize = 256;
    if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!(
            "it is {} bytes long, more than the limit of {MAX_NAME_BYTES}",
            name.len()
        ))
    } else if name.contains('\0') {
        Some("it contains a NUL character".to_owned())
    } else {
        None
    }
}

/// Skips the value of an unrecognised key (`= expr` or `(...)`), so parsing can go on to
/// report the other keys.
pub(crate) fn skip_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<proc_macro2::TokenStream>()?;
    }
    Ok(())
}

//! `#[derive(DomainEvent)]`: parse, model, validate, generate.

mod codegen;
mod model;
mod validate;

use proc_macro2::TokenStream;
use quote::quote;
use syn::{DeriveInput, Ident};

use crate::errors::Errors;

/// The `impl ::annals::DomainEvent` for `input`, or every error found in it.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let model = model::EventEnum::parse(input, &mut errors);
    if let Some(model) = &model {
        validate::validate(model, &mut errors);
    }
    errors.finish()?;
    match model {
        Some(model) => Ok(codegen::generate(&model)),
        // `parse` records an error whenever it returns `None`, so `finish` returned above.
        None => Ok(TokenStream::new()),
    }
}

/// The errors, plus an impl whose bodies are never run, so the rest of the crate still
/// type-checks and the user sees only the real mistakes.
pub(crate) fn fallback(input: &DeriveInput, error: &syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    if !input.generics.params.is_empty() {
        // A stub for a generic enum would add its own errors (bounds, lifetimes).
        return errors;
    }
    let stub = stub(&input.ident);
    quote!(#errors #stub)
}

/// An `impl ::annals::DomainEvent` for `ident` whose bodies are never run.
pub(crate) fn stub(ident: &Ident) -> TokenStream {
    quote! {
        #[automatically_derived]
        impl ::annals::DomainEvent for #ident {
            fn upcaster_chain() -> &'static ::annals::UpcasterChain {
                ::core::unimplemented!()
            }
            fn event_type(&self) -> &'static str {
                ::core::unimplemented!()
            }
            fn schema_version(&self) -> u32 {
                ::core::unimplemented!()
            }
            fn to_payload(&self) -> ::annals::Result<::annals::Payload> {
                ::core::unimplemented!()
            }
            fn from_payload(
                _: &str,
                _: &str,
            ) -> ::core::result::Result<Self, ::annals::__private::serde_json::Error> {
                ::core::unimplemented!()
            }
        }
    }
}

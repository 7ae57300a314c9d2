//! `#[derive(Aggregate)]`: parse, model, validate, generate.

mod codegen;
mod model;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::DeriveInput;

use crate::errors::Errors;
use model::AggregateModel;

/// The `impl ::annals::Aggregate` for `input`, or every error found in it.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let model = AggregateModel::parse(input, &mut errors);
    errors.finish()?;
    Ok(codegen::generate(&model))
}

/// The errors, plus an impl that stops follow-on errors where the type is used as an
/// aggregate. Types the attribute did not give are replaced by a hidden uninhabited event
/// type, `()` and `Infallible`.
pub(crate) fn fallback(input: &DeriveInput, error: &syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    if !input.generics.params.is_empty() || matches!(input.data, syn::Data::Union(_)) {
        return errors;
    }
    let mut ignored = Errors::default();
    let model = AggregateModel::parse(input, &mut ignored);
    let ident = &input.ident;
    let stub_event = format_ident!("__AnnalsStubEventFor{}", ident);
    let event = match &model.event {
        Some(event) => quote!(#event),
        None => quote!(#stub_event),
    };
    let command = model
        .command
        .as_ref()
        .map_or_else(|| quote!(()), |c| quote!(#c));
    let error_type = model
        .error
        .as_ref()
        .map_or_else(|| quote!(::core::convert::Infallible), |e| quote!(#e));
    let stub_event_def = model.event.is_none().then(|| {
        let stub = crate::event::stub(&stub_event);
        quote! {
            #[doc(hidden)]
            #[allow(non_camel_case_types)]
            pub enum #stub_event {}
            #stub
        }
    });
    quote! {
        #errors
        #stub_event_def
        #[automatically_derived]
        impl ::annals::Aggregate for #ident {
            const TYPE: &'static str = "";
            type Event = #event;
            type Command = #command;
            type Error = #error_type;
            fn handle(
                &self,
                _: Self::Command,
            ) -> ::core::result::Result<::std::vec::Vec<Self::Event>, Self::Error> {
                ::core::unimplemented!()
            }
            fn apply(&mut self, _: &Self::Event) {
                ::core::unimplemented!()
            }
        }
    }
}

//! Code generation for `#[derive(Aggregate)]`. Every path is absolute.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};

use super::model::AggregateModel;

/// The impl: constants and types from the attribute; `handle` and `apply` forward to the
/// type's inherent methods of the same names (see [`forward`]).
pub(crate) fn generate(model: &AggregateModel<'_>) -> TokenStream {
    let input = model.input;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let name = &model.name;
    let (event, command, error) = (&model.event, &model.command, &model.error);
    let snapshot_version = model
        .snapshot_version
        .map(|version| quote!(const SNAPSHOT_VERSION: u32 = #version;));
    let snapshot_policy = model.snapshot_every.map(|every| {
        quote! {
            const SNAPSHOT_POLICY: ::annals::SnapshotPolicy =
                ::annals::SnapshotPolicy::EveryNEvents(#every);
        }
    });
    let handle = forward(
        ident,
        "handle",
        quote!(&self, __annals_command: Self::Command),
        quote!(-> ::core::result::Result<::std::vec::Vec<Self::Event>, Self::Error>),
        quote!(self, __annals_command),
    );
    let apply = forward(
        ident,
        "apply",
        quote!(&mut self, __annals_event: &Self::Event),
        TokenStream::new(),
        quote!(self, __annals_event),
    );
    quote! {
        #[automatically_derived]
        impl #impl_generics ::annals::Aggregate for #ident #ty_generics #where_clause {
            const TYPE: &'static str = #name;
            #snapshot_version
            #snapshot_policy
            type Event = #event;
            type Command = #command;
            type Error = #error;

            #handle
            #apply
        }
    }
}

/// A trait method forwarding to the inherent method `name` of the aggregate; `output` is
/// its `-> Type`, if any.
///
/// Inside the impl, `Self::handle` would resolve to the trait method itself when the type has
/// no inherent `handle`, an endless recursion. A local trait with a method of the same name
/// makes that case ambiguous instead: error E0034 "multiple `handle` found", whose second
/// candidate is named `write_an_inherent_fn_handle_for_the_aggregate`. The method name is
/// spanned at the type's name so the error points there; `deny(unconditional_recursion)` is a
/// second guard.
fn forward(
    ident: &syn::Ident,
    name: &str,
    params: TokenStream,
    output: TokenStream,
    args: TokenStream,
) -> TokenStream {
    let span = ident.span();
    let method = syn::Ident::new(name, span);
    let guard = format_ident!("write_an_inherent_fn_{}_for_the_aggregate", name);
    let fn_token = quote_spanned!(span=> fn);
    quote! {
        #[deny(unconditional_recursion)]
        #fn_token #method(#params) #output {
            #[allow(non_camel_case_types, dead_code)]
            trait #guard {
                fn #method(&self) {}
            }
            impl<T: ?::core::marker::Sized> #guard for T {}
            Self::#method(#args)
        }
    }
}

//! Code generation for `#[derive(DomainEvent)]`. Every path is absolute, so the code compiles
//! whatever the calling module imports or shadows.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::model::{EventEnum, EventVariant, Shape, Step};

/// The `impl ::annals::DomainEvent` of a valid enum.
pub(crate) fn generate(model: &EventEnum<'_>) -> TokenStream {
    let ident = model.ident;
    let chain = chain(model);
    let names = model.variants.iter().map(|v| {
        let (var, name) = (v.ident, &v.name);
        quote!(Self::#var { .. } => #name,)
    });
    let versions = model.variants.iter().map(|v| {
        let (var, version) = (v.ident, v.version);
        quote!(Self::#var { .. } => #version,)
    });
    let encoders = model.variants.iter().map(encode);
    let decoders = model.variants.iter().map(decode);
    let enum_name = ident.to_string();
    quote! {
        #[automatically_derived]
        impl ::annals::DomainEvent for #ident {
            fn upcaster_chain() -> &'static ::annals::UpcasterChain {
                #chain
            }

            fn event_type(&self) -> &'static str {
                match self {
                    #(#names)*
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    #(#versions)*
                }
            }

            fn to_payload(&self) -> ::annals::Result<::annals::Payload> {
                match self {
                    #(#encoders)*
                }
            }

            fn from_payload(
                __annals_event_type: &str,
                __annals_payload: &str,
            ) -> ::core::result::Result<Self, ::annals::__private::serde_json::Error> {
                match __annals_event_type {
                    #(#decoders)*
                    _ => ::core::result::Result::Err(
                        <::annals::__private::serde_json::Error
                            as ::annals::__private::serde::de::Error>::custom(
                            ::core::format_args!(
                                "{} is not an event type of {}",
                                __annals_event_type,
                                #enum_name,
                            ),
                        ),
                    ),
                }
            }
        }
    }
}

/// Builds the chain once: every type with its latest version, then every step.
fn chain(model: &EventEnum<'_>) -> TokenStream {
    let types = model.variants.iter().map(|v| {
        let (name, version) = (&v.name, v.version);
        quote!(.event_type(#name, #version))
    });
    let steps = model
        .variants
        .iter()
        .flat_map(|v| v.steps.iter().map(move |s| step(v, s)));
    quote! {
        static CHAIN: ::std::sync::OnceLock<::annals::UpcasterChain> =
            ::std::sync::OnceLock::new();
        CHAIN.get_or_init(|| {
            // The derive checked these rules at compile time (duplicate names, version 0,
            // steps out of range, gaps), so `build` cannot refuse the chain.
            ::core::result::Result::unwrap_or_default(
                ::annals::UpcasterChain::builder()
                    #(#types)*
                    #(#steps)*
                    .build(),
            )
        })
    }
}

/// One `.step(..)`; a function of the wrong signature is reported at its path.
fn step(variant: &EventVariant<'_>, step: &Step) -> TokenStream {
    let (name, from, path) = (&variant.name, step.from, &step.path);
    let typed = quote_spanned! {path.span()=>
        {
            let __annals_step: fn(
                ::annals::__private::serde_json::Value,
            ) -> ::core::result::Result<
                ::annals::__private::serde_json::Value,
                ::annals::BoxError,
            > = #path;
            __annals_step
        }
    };
    quote!(.step(#name, #from, #typed))
}

/// Encodes a variant's fields, borrowing them (no clones).
fn encode(variant: &EventVariant<'_>) -> TokenStream {
    let var = variant.ident;
    match &variant.shape {
        Shape::Unit => quote! {
            Self::#var { .. } => ::annals::Payload::from_json("{}"),
        },
        Shape::Newtype(_) => quote! {
            Self::#var(__annals_field) => ::annals::Payload::from_serialize(__annals_field),
        },
        Shape::Named(fields) => {
            let idents: Vec<_> = fields.iter().map(|f| f.ident).collect();
            let types = fields.iter().map(|f| f.ty);
            let attrs: Vec<_> = fields.iter().map(|f| &f.serde_attrs).collect();
            let bindings: Vec<_> = (0..fields.len())
                .map(|i| format_ident!("__annals_field_{}", i))
                .collect();
            quote! {
                Self::#var { #(#idents: #bindings),* } => {
                    #[derive(::annals::__private::serde::Serialize)]
                    #[serde(crate = "::annals::__private::serde")]
                    struct __AnnalsEncode<'__annals> {
                        #(#(#attrs)* #idents: &'__annals #types,)*
                    }
                    ::annals::Payload::from_serialize(&__AnnalsEncode { #(#idents: #bindings),* })
                }
            }
        }
    }
}

/// Decodes a payload of the latest version straight into the variant.
fn decode(variant: &EventVariant<'_>) -> TokenStream {
    let (var, name) = (variant.ident, &variant.name);
    let body = match &variant.shape {
        Shape::Unit => quote! {
            #[derive(::annals::__private::serde::Deserialize)]
            #[serde(crate = "::annals::__private::serde")]
            struct __AnnalsDecode {}
            let __AnnalsDecode {} = ::annals::__private::serde_json::from_str(__annals_payload)?;
            ::core::result::Result::Ok(Self::#var)
        },
        Shape::Newtype(ty) => quote! {
            ::core::result::Result::map(
                ::annals::__private::serde_json::from_str::<#ty>(__annals_payload),
                Self::#var,
            )
        },
        Shape::Named(fields) => {
            let idents: Vec<_> = fields.iter().map(|f| f.ident).collect();
            let types = fields.iter().map(|f| f.ty);
            let attrs = fields.iter().map(|f| &f.serde_attrs);
            quote! {
                #[derive(::annals::__private::serde::Deserialize)]
                #[serde(crate = "::annals::__private::serde")]
                struct __AnnalsDecode {
                    #(#(#attrs)* #idents: #types,)*
                }
                let __annals_decoded: __AnnalsDecode = ::annals::__private::serde_json::from_str(__annals_payload)?;
                ::core::result::Result::Ok(Self::#var { #(#idents: __annals_decoded.#idents),* })
            }
        }
    };
    quote!(#name => { #body })
}

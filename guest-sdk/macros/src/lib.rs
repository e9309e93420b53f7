//! The attribute macros of the Weir plugin SDK, re-exported by `weir-guest` as
//! `#[weir::filter]`, `#[weir::map]`, `#[weir::filter_map]`, `#[weir::flat_map]`,
//! `#[weir::partitioner]`, `#[weir::aggregate]` and `#[weir::scalar]`.
//!
//! Each macro leaves the item it is put on untouched, so the plugin's own `cargo test` calls the
//! plain function, and adds — only when compiling to `wasm32` — the exports of the plugin ABI:
//! `weir_abi_version`, `weir_kind`, `weir_alloc`, `weir_init`, `weir_process` and
//! `weir_panic_message`. The work behind each export lives in `weir::__rt`; the macros only
//! adapt the user's function to it. One plugin per crate: a second macro would export the same
//! names twice.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{ItemFn, ItemImpl, parse_macro_input};

/// `#[weir::filter] fn keep(r: &Record [, params: &Params]) -> bool | Result<bool>`
#[proc_macro_attribute]
pub fn filter(_attr: TokenStream, item: TokenStream) -> TokenStream {
    per_record(
        item,
        "Filter",
        |call| quote!(::weir::__rt::filter(len, |r, params| #call)),
    )
}

/// `#[weir::map] fn f(r: Record [, params: &Params]) -> Record | Result<Record>`
#[proc_macro_attribute]
pub fn map(_attr: TokenStream, item: TokenStream) -> TokenStream {
    per_record(item, "Map", map_runner)
}

/// `#[weir::filter_map] fn f(r: Record [, params: &Params]) -> Option<Record> | Result<Option<Record>>`
#[proc_macro_attribute]
pub fn filter_map(_attr: TokenStream, item: TokenStream) -> TokenStream {
    per_record(item, "FilterMap", map_runner)
}

/// `#[weir::flat_map] fn f(r: Record [, params: &Params]) -> Vec<Record> | Result<Vec<Record>>`
#[proc_macro_attribute]
pub fn flat_map(_attr: TokenStream, item: TokenStream) -> TokenStream {
    per_record(item, "FlatMap", map_runner)
}

/// `#[weir::partitioner] fn p(r: &Record, partitions: u32 [, params: &Params]) -> u32 | Result<u32>`
#[proc_macro_attribute]
pub fn partitioner(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    let call = match function.sig.inputs.len() {
        2 => quote!(|r, n, _params| #name(r, n)),
        3 => quote!(|r, n, params| #name(r, n, params)),
        count => {
            return arity_error(&function, count, "(record, partitions [, params])");
        }
    };
    let process = quote!(::weir::__rt::partitioner(len, #call));
    exports(
        quote!(#function),
        "Partitioner",
        quote!(::weir::__rt::init(len)),
        process,
    )
}

/// `#[weir::scalar] fn f(v: &str [, params: &Params]) -> String | Option<String> | Result<…>`:
/// a function SQL calls on a text (`CREATE FUNCTION f AS PLUGIN 'name'`); `None` is NULL.
#[proc_macro_attribute]
pub fn scalar(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    let call = match function.sig.inputs.len() {
        1 => quote!(|v, _params| #name(v)),
        2 => quote!(|v, params| #name(v, params)),
        count => return arity_error(&function, count, "(value [, params])"),
    };
    let process = quote!(::weir::__rt::scalar(len, #call));
    exports(
        quote!(#function),
        "Scalar",
        quote!(::weir::__rt::init(len)),
        process,
    )
}

/// `#[weir::aggregate] impl Aggregate for Rollup { … }`: a keyed accumulator over tumbling
/// windows of event time; see `weir::Aggregate`.
#[proc_macro_attribute]
pub fn aggregate(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let implementation = parse_macro_input!(item as ItemImpl);
    let ty = &implementation.self_ty;
    let init = quote!(::weir::__rt::init_aggregate::<#ty>(len));
    let process = quote!(::weir::__rt::aggregate::<#ty>(len));
    exports(quote!(#implementation), "Aggregate", init, process)
}

/// The three kinds of maps differ only in what their function may return.
fn map_runner(call: TokenStream2) -> TokenStream2 {
    quote!(::weir::__rt::map(len, |r, params, sink| ::weir::__rt::MapResult::emit(#call, sink)))
}

/// Filters and maps: a function of one record and, optionally, the params. `runner` wraps the
/// call of the user's function, written with `r` and `params`, into the `weir_process` body.
fn per_record(
    item: TokenStream,
    kind: &str,
    runner: impl Fn(TokenStream2) -> TokenStream2,
) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    let call = match function.sig.inputs.len() {
        1 => quote!({ let _ = params; #name(r) }),
        2 => quote!(#name(r, params)),
        count => return arity_error(&function, count, "(record [, params])"),
    };
    let process = runner(call);
    exports(
        quote!(#function),
        kind,
        quote!(::weir::__rt::init(len)),
        process,
    )
}

fn arity_error(function: &ItemFn, count: usize, expected: &str) -> TokenStream {
    let message = format!(
        "a weir plugin function takes {expected}, `{}` takes {count} argument(s)",
        function.sig.ident
    );
    syn::Error::new_spanned(&function.sig, message)
        .to_compile_error()
        .into()
}

fn exports(
    item: TokenStream2,
    kind: &str,
    init: TokenStream2,
    process: TokenStream2,
) -> TokenStream {
    let kind = syn::Ident::new(kind, proc_macro2::Span::call_site());
    quote! {
        #item

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(no_mangle)]
            extern "C" fn weir_abi_version() -> u32 {
                ::weir::__rt::ABI_VERSION
            }
            #[unsafe(no_mangle)]
            extern "C" fn weir_kind() -> u32 {
                ::weir::Kind::#kind as u32
            }
            #[unsafe(no_mangle)]
            extern "C" fn weir_alloc(len: u32) -> u32 {
                ::weir::__rt::alloc(len)
            }
            #[unsafe(no_mangle)]
            extern "C" fn weir_init(len: u32) -> u64 {
                #init
            }
            #[unsafe(no_mangle)]
            extern "C" fn weir_process(len: u32) -> u64 {
                #process
            }
            #[unsafe(no_mangle)]
            extern "C" fn weir_panic_message() -> u64 {
                ::weir::__rt::panic_message()
            }
        };
    }
    .into()
}

//! `#[tierstack::cached]`: a cached function in one line. Use it through
//! the facade (`tierstack::cached`), whose documentation is the reference;
//! this crate holds the expansion only.

use std::time::Duration;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{ToTokens as _, format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{
    Expr, FnArg, GenericArgument, Ident, ItemFn, LitStr, Pat, PathArguments, ReturnType, Type,
};

/// See `tierstack::cached`.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| options.parse(&meta));
    syn::parse_macro_input!(attr with parser);
    let function = syn::parse_macro_input!(item as ItemFn);
    match expand(&options, function) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

const OPTIONS: &str = "cache, source, key, ttl, stale_for, negative_ttl, refresh_ahead, soft_timeout, hard_timeout, skip, rename";

#[derive(Default)]
struct Options {
    cache: Option<Expr>,
    source: Option<LitStr>,
    key: Option<Expr>,
    ttl: Option<(Duration, Span)>,
    stale_for: Option<(Duration, Span)>,
    negative_ttl: Option<(Duration, Span)>,
    refresh_ahead: Option<(f64, Span)>,
    soft_timeout: Option<(Duration, Span)>,
    hard_timeout: Option<(Duration, Span)>,
    skip: Vec<Ident>,
    rename: Vec<(Ident, LitStr)>,
}

impl Options {
    fn parse(&mut self, meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
        let name = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match name.as_str() {
            "cache" => self.cache = Some(meta.value()?.parse()?),
            "source" => self.source = Some(meta.value()?.parse()?),
            "key" => {
                let value: Expr = meta.value()?.parse()?;
                // A string holds the expression, as in the `cached` crate.
                self.key = Some(match &value {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(text),
                        ..
                    }) => text.parse()?,
                    _ => value,
                });
            }
            "ttl" => self.ttl = Some(duration(meta)?),
            "stale_for" => self.stale_for = Some(duration(meta)?),
            "negative_ttl" => self.negative_ttl = Some(duration(meta)?),
            "soft_timeout" => self.soft_timeout = Some(duration(meta)?),
            "hard_timeout" => self.hard_timeout = Some(duration(meta)?),
            "skip" => meta.parse_nested_meta(|param| {
                let ident = param
                    .path
                    .get_ident()
                    .ok_or_else(|| param.error("skip(...) takes parameter names"))?;
                self.skip.push(ident.clone());
                Ok(())
            })?,
            "rename" => meta.parse_nested_meta(|param| {
                let ident = param
                    .path
                    .get_ident()
                    .ok_or_else(|| param.error("rename(...) takes `parameter = \"name\"` pairs"))?
                    .clone();
                let to: LitStr = param.value()?.parse()?;
                self.rename.push((ident, to));
                Ok(())
            })?,
            "refresh_ahead" => {
                let fraction: syn::LitFloat = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "refresh_ahead is the fraction of the TTL after which a hit refreshes the entry in the background: a number such as 0.8",
                    )
                })?;
                let value: f64 = fraction.base10_parse()?;
                if !(value > 0.0 && value < 1.0) {
                    return Err(syn::Error::new(
                        fraction.span(),
                        "refresh_ahead must lie between 0 and 1, such as 0.8 (refresh a hit in the last fifth of its TTL)",
                    ));
                }
                self.refresh_ahead = Some((value, fraction.span()));
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown option `{name}` of #[cached]; expected one of: {OPTIONS}"
                )));
            }
        }
        Ok(())
    }
}

fn duration(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<(Duration, Span)> {
    let text = match meta.value()?.parse::<syn::Lit>()? {
        syn::Lit::Str(text) => text,
        other => {
            return Err(syn::Error::new(
                other.span(),
                "write a duration as a string with its unit, like \"90s\", \"10m\", \"1h\" or \"7d\"",
            ));
        }
    };
    let value = humantime::parse_duration(&text.value()).map_err(|e| {
        syn::Error::new(
            text.span(),
            format!(
                "`{}` is not a duration ({e}); write it like \"90s\", \"10m\", \"1h\" or \"7d\"",
                text.value()
            ),
        )
    })?;
    Ok((value, text.span()))
}

/// Whether a type borrows: a reference or a lifetime anywhere in it.
fn borrows(tokens: Tokens) -> bool {
    tokens.into_iter().any(|token| match token {
        proc_macro2::TokenTree::Punct(p) => p.as_char() == '&' || p.as_char() == '\'',
        proc_macro2::TokenTree::Group(g) => borrows(g.stream()),
        _ => false,
    })
}

/// What the function returns, as the cache sees it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `Result<T, E>`: errors are not cached.
    Result,
    /// `Result<Option<T>, E>`: `None` is cached as a negative entry.
    ResultOption,
    /// `Option<T>`.
    Option,
    /// `T`.
    Plain,
}

/// The last path segment's name and its type arguments.
fn generic<'t>(ty: &'t Type, name: &str) -> Option<Vec<&'t Type>> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    Some(
        args.args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
    )
}

/// The shape, and whether the value is declared as `Arc<T>`.
fn shape(ty: &Type) -> (Shape, bool) {
    let is_arc = |t: &Type| generic(t, "Arc").is_some_and(|args| args.len() == 1);
    if let Some(args) = generic(ty, "Result") {
        if let Some(ok) = args.first() {
            if let Some(inner) = generic(ok, "Option") {
                return (
                    Shape::ResultOption,
                    inner.first().is_some_and(|t| is_arc(t)),
                );
            }
            return (Shape::Result, is_arc(ok));
        }
    }
    if let Some(args) = generic(ty, "Option") {
        return (Shape::Option, args.first().is_some_and(|t| is_arc(t)));
    }
    (Shape::Plain, is_arc(ty))
}

struct Param {
    ident: Ident,
    ty: Type,
}

#[allow(clippy::too_many_lines)] // one expansion, read top to bottom
fn expand(options: &Options, mut function: ItemFn) -> syn::Result<Tokens> {
    let sig = function.sig.clone();
    if let Some(param) = sig
        .generics
        .params
        .iter()
        .find(|p| !matches!(p, syn::GenericParam::Lifetime(_)))
    {
        return Err(syn::Error::new(
            param.span(),
            "a #[cached] function cannot be generic over types or constants: its key and its cached value need one concrete type each (lifetimes are fine)",
        ));
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        if receiver.reference.is_some() && receiver.mutability.is_some() {
            return Err(syn::Error::new(
                receiver.span(),
                "a #[cached] method takes `&self` (or `self`), not `&mut self`: callers of one key share one run of the body, so it cannot have exclusive access",
            ));
        }
    }
    let ret = match &sig.output {
        ReturnType::Type(_, ty) => (**ty).clone(),
        ReturnType::Default => {
            return Err(syn::Error::new(
                sig.ident.span(),
                "a #[cached] function must return the value to cache",
            ));
        }
    };
    let is_async = sig.asyncness.is_some();

    // Parameters: the key material, and where the cache is.
    let mut params = Vec::new();
    let mut cache_param = None;
    for input in &mut function.sig.inputs {
        let FnArg::Typed(typed) = input else { continue };
        let marked = typed.attrs.iter().position(|a| a.path().is_ident("cache"));
        if let Some(at) = marked {
            typed.attrs.remove(at);
        }
        let Pat::Ident(pat) = &*typed.pat else {
            return Err(syn::Error::new(
                typed.pat.span(),
                "parameters of a #[cached] function must be plain names: the key is made of them",
            ));
        };
        if marked.is_some() {
            if cache_param.is_some() {
                return Err(syn::Error::new(
                    typed.span(),
                    "only one parameter can be the #[cache]",
                ));
            }
            cache_param = Some(pat.ident.clone());
        } else {
            params.push(Param {
                ident: pat.ident.clone(),
                ty: (*typed.ty).clone(),
            });
        }
    }
    for skipped in &options.skip {
        if !params.iter().any(|p| p.ident == *skipped) {
            return Err(syn::Error::new(
                skipped.span(),
                format!("skip({skipped}): the function has no parameter `{skipped}`"),
            ));
        }
    }
    for (renamed, _) in &options.rename {
        if !params.iter().any(|p| p.ident == *renamed) {
            return Err(syn::Error::new(
                renamed.span(),
                format!("rename({renamed} = …): the function has no parameter `{renamed}`"),
            ));
        }
    }

    if let Some((_, span)) = &options.refresh_ahead {
        if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
            return Err(syn::Error::new(
                receiver.span(),
                "refresh_ahead runs the body in the background after the call returned, which `self` cannot outlive: make it a function that takes what it needs as owned parameters (a `Clone` client as a `skip`ped parameter)",
            ));
        }
        if let Some(param) = params.iter().find(|p| borrows(p.ty.to_token_stream())) {
            return Err(syn::Error::new(
                param.ty.span(),
                format!(
                    "refresh_ahead runs the body in the background after the call returned, which the borrowed parameter `{}` cannot outlive: take it owned (`String`, not `&str`)",
                    param.ident
                ),
            ));
        }
        if !is_async && sig.generics.lifetimes().next().is_some() {
            return Err(syn::Error::new(
                *span,
                "refresh_ahead needs a function without lifetimes",
            ));
        }
    }

    let cache = match (&options.cache, &cache_param) {
        (Some(expr), None) => quote!(#expr),
        (None, Some(ident)) => quote!(#ident),
        (Some(expr), Some(_)) => {
            return Err(syn::Error::new(
                expr.span(),
                "the cache is given twice: by `cache =` and by a #[cache] parameter",
            ));
        }
        (None, None) => {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[cached] needs to know the cache: `cache = NAME` (a `GlobalCache` static, or an expression such as `self.cache`), or a parameter marked `#[cache]`",
            ));
        }
    };

    if let (Some(_), Some(source)) = (&options.key, &options.source) {
        return Err(syn::Error::new(
            source.span(),
            "give either `source` (the key is made of it and the parameters) or a whole `key`, not both: the key expression carries its own source",
        ));
    }
    let key = if let Some(expr) = &options.key {
        quote!({ #expr })
    } else {
        let Some(source) = &options.source else {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[cached] needs the key's source: `source = \"audnexus:search\"` (parameters are added by name), or a whole `key = \"…\"` expression",
            ));
        };
        let parts: Vec<Tokens> = params
            .iter()
            .filter(|p| !options.skip.contains(&p.ident))
            .map(|p| {
                let ident = &p.ident;
                let name = options
                    .rename
                    .iter()
                    .find(|(from, _)| *from == p.ident)
                    .map_or_else(|| ident.to_string(), |(_, to)| to.value());
                quote_spanned!(p.ty.span()=> (#name, ::tierstack::__macro::param(&#ident)))
            })
            .collect();
        if parts.is_empty() {
            quote!(::tierstack::Key::bare(#source))
        } else {
            quote!(::tierstack::Key::new(#source, [#(#parts),*]))
        }
    };

    let (shape, is_arc) = shape(&ret);
    if shape != Shape::Result && shape != Shape::ResultOption {
        for (name, option) in [
            ("soft_timeout", &options.soft_timeout),
            ("hard_timeout", &options.hard_timeout),
        ] {
            if let Some((_, span)) = option {
                return Err(syn::Error::new(
                    *span,
                    format!(
                        "{name} needs a function returning `Result<_, E>`: a timeout is an error, and this function cannot return one"
                    ),
                ));
            }
        }
    }

    if let (Some((_, span)), Shape::Result | Shape::Plain) = (&options.negative_ttl, shape) {
        return Err(syn::Error::new(
            *span,
            "negative_ttl is how long a `None` is cached: it needs a function returning `Option<T>` or `Result<Option<T>, E>`",
        ));
    }
    let nanos = |d: &Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let ttl = options.ttl.as_ref().map_or_else(
        || quote!(::tierstack::Ttl::TierDefault),
        |(d, _)| {
            let n = nanos(d);
            quote!(::core::time::Duration::from_nanos(#n))
        },
    );
    let mut fetch_options = quote!(::tierstack::FetchOptions::ttl(#ttl));
    for (method, option) in [
        ("stale_for", &options.stale_for),
        ("negative_ttl", &options.negative_ttl),
        ("soft_timeout", &options.soft_timeout),
        ("hard_timeout", &options.hard_timeout),
    ] {
        if let Some((d, _)) = option {
            let method = format_ident!("{method}");
            let n = nanos(d);
            fetch_options = quote!(#fetch_options.#method(::core::time::Duration::from_nanos(#n)));
        }
    }

    let block = &function.block;
    let unarc = quote!(::tierstack::__macro::unwrap_or_clone);
    // What a memory hit (`__hit: Arc<T>`) returns, checked before the body
    // is made.
    let hit_value = if is_arc {
        quote!(__hit)
    } else {
        quote!(#unarc(__hit))
    };
    let hit_answer = match shape {
        Shape::Result => quote!(::core::result::Result::Ok(#hit_value)),
        Shape::ResultOption => {
            quote!(::core::result::Result::Ok(::core::option::Option::Some(#hit_value)))
        }
        Shape::Option => quote!(::core::option::Option::Some(#hit_value)),
        Shape::Plain => hit_value,
    };
    let hit = if is_async {
        quote!(::tierstack::__macro::hit(__cache, &__key))
    } else {
        quote!(::tierstack::__macro::blocking_hit(__cache, &__key))
    };
    // The body as the cache stores it (the value, not an `Arc` of it), and
    // the answer as the function returns it.
    let (store, answer): (Tokens, Box<dyn Fn(Tokens) -> Tokens>) = match (shape, is_arc) {
        (Shape::Result | Shape::Option, true) => (quote!(__body.map(#unarc)), Box::new(|t| t)),
        (Shape::Result | Shape::Option, false) => {
            (quote!(__body), Box::new(move |t| quote!(#t.map(#unarc))))
        }
        (Shape::ResultOption, true) => (
            quote!(__body.map(|v| ::core::option::Option::map(v, #unarc))),
            Box::new(|t| t),
        ),
        (Shape::ResultOption, false) => (
            quote!(__body),
            Box::new(move |t| quote!(#t.map(|v| ::core::option::Option::map(v, #unarc)))),
        ),
        (Shape::Plain, true) => (quote!(#unarc(__body)), Box::new(|t| t)),
        (Shape::Plain, false) => (quote!(__body), Box::new(move |t| quote!(#unarc(#t)))),
    };
    let runner = match (shape, is_async) {
        (Shape::Result, true) => quote!(result),
        (Shape::ResultOption, true) => quote!(result_option),
        (Shape::Option, true) => quote!(option),
        (Shape::Plain, true) => quote!(plain),
        (Shape::Result, false) => quote!(blocking_result),
        (Shape::ResultOption, false) => quote!(blocking_result_option),
        (Shape::Option, false) => quote!(blocking_option),
        (Shape::Plain, false) => quote!(blocking_plain),
    };
    let (typed, stored) = if is_async {
        (
            quote!(let __typed = ::tierstack::__macro::typed_future::<#ret, _>(async move #block);),
            quote!(async move { let __body = __typed.await; #store }),
        )
    } else {
        (
            quote!(let __typed = ::tierstack::__macro::typed_closure::<#ret, _>(move || #block);),
            quote!(move || { let __body = __typed(); #store }),
        )
    };
    let run = if is_async {
        quote!(::tierstack::__macro::#runner(__cache, &__key, __options, #stored).await)
    } else {
        quote!(::tierstack::__macro::#runner(__cache, &__key, __options, #stored))
    };
    let call = answer(quote!((#run)));
    let body = if let Some((fraction, _)) = options.refresh_ahead {
        let fraction = proc_macro2::Literal::f64_suffixed(fraction);
        let (hit_due, refresh) = if is_async {
            (quote!(hit_due), quote!(refresh))
        } else {
            (quote!(blocking_hit_due), quote!(blocking_refresh))
        };
        let refreshed = match shape {
            Shape::Result => quote!(refreshed_result),
            Shape::ResultOption => quote!(refreshed_result_option),
            Shape::Option => quote!(refreshed_option),
            Shape::Plain => quote!(refreshed_plain),
        };
        // The body is made before the hit is known: a hit late in its
        // life hands it to a background refresh.
        quote! {
            let __options = #fetch_options;
            #typed
            if let ::core::option::Option::Some((__hit, __due)) =
                ::tierstack::__macro::#hit_due(__cache, &__key, #fraction)
            {
                if __due {
                    ::tierstack::__macro::#refresh(
                        __cache, __key, __options, #stored, ::tierstack::__macro::#refreshed,
                    );
                }
                return #hit_answer;
            }
            #call
        }
    } else {
        quote! {
            if let ::core::option::Option::Some(__hit) = #hit {
                return #hit_answer;
            }
            let __options = #fetch_options;
            #typed
            #call
        }
    };

    let attrs = &function.attrs;
    let vis = &function.vis;
    let sig = &function.sig;
    let name = &sig.ident;
    let inputs = &sig.inputs;
    let generics = &sig.generics;
    let where_clause = &sig.generics.where_clause;
    let key_fn = format_ident!("{name}_key");
    let invalidate_fn = format_ident!("{name}_invalidate");
    let key_doc =
        format!("The cache key of one call of [`{name}`](#{name}): what it is stored under.");
    let invalidate_doc = format!(
        "Removes one call's cached answer of `{name}` from every tier; `true` if a tier held it."
    );
    let refresh_fn = format_ident!("{name}_refresh");
    let refresh_doc = format!(
        "Removes one call's cached answer of `{name}`, then calls it: the answer is fetched again and cached."
    );
    // The function itself, called with this companion's own arguments.
    let args: Vec<Tokens> = sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Receiver(_) => None,
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(pat) => {
                    let ident = &pat.ident;
                    Some(quote!(#ident))
                }
                other => Some(quote!(#other)),
            },
        })
        .collect();
    let original = if matches!(sig.inputs.first(), Some(FnArg::Receiver(_))) {
        quote!(self.#name(#(#args),*))
    } else {
        quote!(#name(#(#args),*))
    };
    let refresh = if is_async {
        quote! {
            #[doc = #refresh_doc]
            #vis async fn #refresh_fn #generics (#inputs) -> #ret #where_clause {
                let __key: ::tierstack::Key = #key;
                // A failed removal leaves the old answer; the call then
                // returns it, as a plain call would.
                let _ = ::tierstack::__macro::invalidate(&(#cache), &__key).await;
                #original.await
            }
        }
    } else {
        quote! {
            #[doc = #refresh_doc]
            #vis fn #refresh_fn #generics (#inputs) -> #ret #where_clause {
                let __key: ::tierstack::Key = #key;
                let _ = ::tierstack::__macro::blocking_invalidate(&(#cache), &__key);
                #original
            }
        }
    };
    let invalidate = if is_async {
        quote! {
            #[doc = #invalidate_doc]
            #[allow(unused_variables)]
            #vis async fn #invalidate_fn #generics (#inputs) -> ::tierstack::Result<bool> #where_clause {
                let __key: ::tierstack::Key = #key;
                ::tierstack::__macro::invalidate(&(#cache), &__key).await
            }
        }
    } else {
        quote! {
            #[doc = #invalidate_doc]
            #[allow(unused_variables)]
            #vis fn #invalidate_fn #generics (#inputs) -> ::tierstack::Result<bool> #where_clause {
                let __key: ::tierstack::Key = #key;
                ::tierstack::__macro::blocking_invalidate(&(#cache), &__key)
            }
        }
    };
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            let __key: ::tierstack::Key = #key;
            let __cache = &(#cache);
            #body
        }

        #[doc = #key_doc]
        #[allow(unused_variables)]
        #vis fn #key_fn #generics (#inputs) -> ::tierstack::Key #where_clause {
            #key
        }

        #invalidate

        #refresh
    })
}

//! `url-path`: a scalar function for SQL that turns a URL or request path into its route, so
//! requests group by endpoint: the scheme, host, query and fragment go, and every segment that
//! is an identifier — all digits, a UUID, or 16 or more hex digits — becomes `:id` (or the
//! `placeholder` param). `NULL` for a text that is not a path or URL.
//!
//! ```text
//! weir plugin deploy url-path url_path.wasm
//! CREATE FUNCTION url_path AS PLUGIN 'url-path';
//! SELECT url_path(path) AS route, count(*) FROM logs GROUP BY route;
//! ```

use weir::Params;

/// Longest text a call normalises; longer ones are NULL.
const TEXT_BYTES_MAX: usize = 8 << 10;

#[weir::scalar]
pub fn url_path(text: &str, params: &Params) -> Option<String> {
    if text.len() > TEXT_BYTES_MAX {
        return None;
    }
    let placeholder = params.get("placeholder").unwrap_or(":id");
    let text = text.trim();
    // An absolute URL: what follows the authority.
    let path = match text.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => text,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return None;
    }
    let mut route = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        route.push('/');
        route.push_str(if is_identifier(segment) {
            placeholder
        } else {
            segment
        });
    }
    if route.is_empty() || path.ends_with('/') && route.len() > 1 {
        route.push('/');
    }
    Some(route)
}

fn is_identifier(segment: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = segment.len() == 36
        && segment.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && hex(&segment.replace('-', ""));
    segment.bytes().all(|b| b.is_ascii_digit()) || uuid || (segment.len() >= 16 && hex(segment))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> Option<String> {
        url_path(text, &Params::default())
    }

    #[test]
    fn identifiers_become_placeholders() {
        assert_eq!(
            route("/users/1234/orders/99?page=2").as_deref(),
            Some("/users/:id/orders/:id")
        );
        assert_eq!(
            route("https://shop.example/cart/3f2a1c9e-8b7d-4c6e-9f00-1a2b3c4d5e6f#top").as_deref(),
            Some("/cart/:id")
        );
        assert_eq!(
            route("/blob/0123456789abcdef0123").as_deref(),
            Some("/blob/:id")
        );
        assert_eq!(route("/static//app.js").as_deref(), Some("/static/app.js"));
        assert_eq!(route("/api/v2/").as_deref(), Some("/api/v2/"));
        assert_eq!(route("/").as_deref(), Some("/"));
        assert_eq!(route("http://host").as_deref(), Some("/"));
        assert_eq!(route("not a path"), None);
        let params = Params::from_pairs([("placeholder", "{id}")]);
        assert_eq!(url_path("/a/42", &params).as_deref(), Some("/a/{id}"));
    }
}

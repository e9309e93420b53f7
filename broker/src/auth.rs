//! The admin token check every listener that asks for the token shares.

/// Whether `presented` is the admin token, in time that does not depend on where they differ.
pub fn token_matches(token: &str, presented: &str) -> bool {
    token.len() == presented.len()
        && token
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

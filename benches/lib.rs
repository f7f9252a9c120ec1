//! Nothing here: the benches of `tokio-exit-stack` live in this package's
//! `[[bench]]` targets (`cargo bench` from the workspace root runs them),
//! so that the crate's own examples and tests never build criterion.

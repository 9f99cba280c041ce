//! `on_every_store!(case, ...)`: each case, an `async fn(Setup)`, as a test on the embedded store
//! (`embedded::case`) and one on MongoDB (`mongodb::case`, skipped with a line saying so when no
//! test server runs). The including file defines `Store { Embedded, Mongo }` and
//! `async fn setup(Store) -> Option<Setup>`.

macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::setup(super::Store::Embedded).await.unwrap()).await
            })*
        }
        mod mongodb {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(setup) = super::setup(super::Store::Mongo).await else { return };
                super::$name(setup).await
            })*
        }
    };
}

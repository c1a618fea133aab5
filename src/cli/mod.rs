//! The code of each `cardd` command. Everything that prints, draws progress
//! bars or chooses an exit code lives here, in the binary, not in the library.
pub mod admin;
pub mod audit;
pub mod backup;
pub mod brand;
pub mod issue_cards;
pub mod keys;
pub mod list;
pub mod report;
pub mod serve;

/// A single-threaded runtime for the commands that talk to a daemon once.
pub fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

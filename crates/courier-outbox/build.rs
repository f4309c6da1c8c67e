//! `sqlx::migrate!` embeds the migration files at compile time, and cargo tracks only the files
//! it embedded: without this, a migration added to a directory leaves a built crate without it.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

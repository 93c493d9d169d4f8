//! The generated bindings of the WASI backend's world (`wit-wasi/world.wit`):
//! standard `wasi:sockets`, `wasi:clocks` and the `wasi:cli/run` export. Only
//! `sys::wasi` uses them; reachable as `portcullis_sdk::__bindings` for the
//! export macros.

#![allow(missing_docs)]

wit_bindgen::generate!({
    path: "wit-wasi",
    world: "backend",
    pub_export_macro: true,
    export_macro_name: "__export_run",
    default_bindings_module: "portcullis_sdk::__bindings",
    generate_all,
});
